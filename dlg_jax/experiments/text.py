"""The text experiment: token accuracy, exact match and ROUGE vs vocabulary size, batch size, sequence
length, model size and the matching distance, each decoded four ways.

``SENTENCES``: 30 sentences written for this project, 10 each of 6, 10 and 14 words (sequence lengths
8, 12 and 16 with ``[CLS]`` and ``[SEP]``), and ``LONG_SENTENCES``, 4 of 30 words (length 32), every word
in both vocabularies measured; one is in the style of a conference announcement. The studies
(:data:`STUDIES`), each a list of points, each point one call of
:func:`dlg_jax.text.attack_batches` (the batches of one point run as the targets of one vmapped
engine run) with the decodings compared (``compare=True``): nearest token over the whole vocabulary or
over the bag of tokens, and refined from the latter with and without swaps.

    python -m dlg_jax.experiments.text --out docs/results                   # every study
    python -m dlg_jax.experiments.text --study batch --point "B = 8" --name b8 --out /tmp/text-exp

writes ``NAME.json`` (every point's decodings and scores, every sentence's tokens) and ``NAME.md`` (the
table); ``NAME`` is ``text_experiment`` unless ``--name`` says otherwise.
"""

import argparse
import os
import time

from dlg_jax.experiments.tables import markdown_table

SENTENCES = (
    "please send me the report today",
    "we will visit our family soon",
    "she bought fresh bread this morning",
    "my brother plays music every night",
    "our team won the final game",
    "the train was late again today",
    "they moved to a small town",
    "i forgot my phone at home",
    "the new school opened last week",
    "he read a good book yesterday",
    "the bank raised rates for the second time this year",
    "we need more time to finish the project before friday",
    "she wrote a letter to her friend in another country",
    "he left the office early because his daughter was sick",
    "the doctor told him to rest and drink more water",
    "a large crowd came to the park for the concert",
    "the weather should be warm for most of the week",
    "please remember to bring your own water and food today",
    "the new law will protect workers who lose their jobs",
    "the students asked the teacher to explain the last question",
    "the conference on machine learning will be held in december in new york city",
    "the city council voted to build a new bridge across the river last year",
    "after the storm the roads were closed and many homes lost power for days",
    "our company plans to open three new stores in the south early next spring",
    "the museum will be free for children and students during the long summer break",
    "she has been working at the hospital for almost ten years as a doctor",
    "all authors are invited to send their full papers before the end of may",
    "we are happy to say that the next meeting will take place in london",
    "he left his job in the city to start a farm with his wife",
    "the children played in the garden until their mother called them in for dinner",
)
LONG_SENTENCES = (
    "after a long and difficult winter the farmers in the north were very glad to see the first warm days of "
    "spring and then began to plant their fields again",
    "the young engineer spent three long weeks testing the new software before she was quite sure that it would "
    "work safely on every machine in the large old factory there",
    "our small company will hold its annual meeting in the main hall next thursday at ten and every single "
    "member of the staff is welcome to attend and to speak",
    "the committee met on monday morning to discuss the new budget and decided to spend more money on schools "
    "and roads and parks in the poor parts of the city",
)
SHORT, MEDIUM, LONG = SENTENCES[:10], SENTENCES[10:20], SENTENCES[20:30]
DECODINGS = ("nearest", "nearest+bag", "refined-swaps+bag", "refined+bag")


def _single(texts, count=2):
    return [[text] for text in texts[:count]]


# study -> points: (label, batches, options of attack_batches); bert-small, l2 and the stored vocabulary
# unless a point says otherwise
STUDIES = {
    "vocabulary": [(f"V = {size}", _single(MEDIUM), {"vocabulary_size": size}) for size in (3131, 30522)],
    "length": [(f"L = {length}", _single(texts), {}) for length, texts in ((8, SHORT), (16, LONG),
                                                                        (32, LONG_SENTENCES))],
    "batch": [(f"B = {size}", [list(LONG[:size])], {}) for size in (1, 2, 4, 8)],
    "model": [(model, _single(LONG), {"model": model}) for model in ("bert-tiny", "bert-small", "bert-medium")],
    "distance": [(f"{distance}, B = 4", [list(LONG[:4])], {"distance": distance}) for distance in ("l2", "tag")],
}


def run_study(name: str, restarts: int, iterations: int, seed: int = 0, points=None) -> list[dict]:
    """Every point of study ``name`` (or those labelled ``points``): per decoding the mean scores over its sentences and the batches'
    exact gradient distances (relative to ``||dW||^2``), plus wall time and every sentence's tokens."""
    from dlg_jax.text import attack_batches, text_attack_config

    rows = []
    for label, batches, options in STUDIES[name]:
        if points and label not in points:
            continue
        options = dict(options)
        config = text_attack_config(restarts=restarts, iterations=iterations, seed=seed,
                                    distance=options.pop("distance", "l2"))
        model = options.pop("model", "bert-small")
        started = time.perf_counter()
        run = attack_batches(batches, model, config, compare=True, **options)
        seconds = time.perf_counter() - started
        row = {"study": name, "point": label, "model": model, "distance": config.distance,
               "vocabulary_size": run.batches[0].vocab.size, "batch_size": len(batches[0]),
               "length": int(run.batches[0].original.shape[1]), "batches": len(batches),
               "orderings": [b.orderings for b in run.batches], "seconds": seconds,
               "compile_seconds": sum(r.compile_seconds for r in run.results),
               "relative_objective": [b.loss / b.gradient_norm2 for b in run.batches]}
        for decoding in DECODINGS:
            summary = run.summary(decoding)
            row[decoding] = {**{key[:-5]: value for key, value in summary.items()},
                             "duplicates": int(sum(b.decodings[decoding]["scores"]["duplicates"] for b in run.batches)),
                             "relative_distance": [b.decodings[decoding]["distance"] / b.gradient_norm2
                                                   for b in run.batches],
                             "moves": [b.decodings[decoding].get("moves") for b in run.batches]}
        row["sentences"] = [{"text": s.text, "tokens": s.batch.vocab.tokens(s.original),
                             "recovered": s.batch.vocab.tokens(s.recovered)} for s in run.sentences]
        rows.append(row)
        best = row["refined+bag"]
        print(f"{name} {label}: {seconds:.0f} s, refined+bag token accuracy {best['token_accuracy']:.0%}, "
              f"exact {best['exact_match']:.0%}, ROUGE-L {best['rougeL']:.3f}", flush=True)
    return rows


def text_table(rows: list[dict]) -> str:
    """Per point: token accuracy / exact match / ROUGE-L of four decodings, duplicates, wall time."""
    shown = DECODINGS
    header = ["study", "point", "L", "B", *shown, "duplicates", "wall s"]
    lines = [[row["study"], row["point"], row["length"], row["batch_size"],
              *(f"{row[d]['token_accuracy']:.0%} / {row[d]['exact_match']:.0%} / {row[d]['rougeL']:.2f}"
                for d in shown),
              row["refined+bag"]["duplicates"], f"{row['seconds']:.0f}"] for row in rows]
    return markdown_table(header, lines) + "\n"


def main(argv=None) -> int:
    import datetime
    import sys

    from dlg_jax.environment import environment
    from dlg_jax.files import atomic_write_bytes, atomic_write_json, prepare_output_dir

    parser = argparse.ArgumentParser(prog="python -m dlg_jax.experiments.text", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="text-exp-out")
    parser.add_argument("--study", action="append", choices=tuple(STUDIES),
                        help="a study to run (repeatable; default: all)")
    parser.add_argument("--point", action="append", help="only the points with this label (repeatable)")
    parser.add_argument("--name", default="text_experiment", help="output file name, without extension")
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args(argv)
    out = prepare_output_dir(args.out)
    studies = args.study or list(STUDIES)
    started = time.perf_counter()
    rows = []
    for name in studies:  # the files are rewritten after every study, so a long run keeps what it has
        rows += run_study(name, args.restarts, args.iterations, points=args.point)
        results = {"config": {"restarts": args.restarts, "iterations": args.iterations, "seed": 0,
                              "studies": studies},
                   "command": "python -m dlg_jax.experiments.text " + " ".join(sys.argv[1:] if argv is None else argv),
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "load_average_at_end": os.getloadavg(), "wall_seconds": time.perf_counter() - started,
                   "environment": environment(), "rows": rows}
        table = text_table(rows)
        atomic_write_json(os.path.join(out, args.name + ".json"), results)
        atomic_write_bytes(os.path.join(out, args.name + ".md"), table.encode())
    print(table + f"wall {results['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
