"""The text experiment: token accuracy vs sequence length and model size, with and without the bag of tokens.

``SENTENCES``: 30 sentences written for this project, 10 each of 6, 10 and 14 tokens (sequence lengths
8, 12 and 16 with ``[CLS]`` and ``[SEP]``), every word in the vocabulary; one is in the style of a
conference announcement. For each text model the sentences of one length run as the targets of one
vmapped engine run (:func:`dlg_jax.text_attack.attack_sentences`), and each run is decoded four ways:
nearest token over the whole vocabulary or over the bag of tokens, each with and without the discrete
refinement.

    python -m dlg_jax.text_experiment --out docs/experiments        # all three models, a few minutes
    python -m dlg_jax.text_experiment --quick --out /tmp/text-exp    # bert-tiny only

writes ``text_experiment.json`` (every sentence's tokens and scores) and ``text_experiment.md`` (the table).
"""

import argparse
import os
import time

import numpy as np

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
DECODINGS = ("nearest", "nearest+bag", "refined", "refined+bag")


def run_experiment(models, restarts: int, iterations: int, seed: int = 0) -> dict:
    """Attack every sentence with every model; rows per (model, sequence length) plus every sentence."""
    from dlg_jax import vocabulary
    from dlg_jax.text_attack import attack_sentences, text_attack_config

    config = text_attack_config(restarts=restarts, iterations=iterations, seed=seed)
    rows, sentences = [], []
    for model in models:
        started = time.perf_counter()
        run = attack_sentences(list(SENTENCES), model, config)
        seconds = time.perf_counter() - started
        print(f"{model}: {seconds:.0f} s, mean token accuracy (refined, bag) "
              f"{run.summary('refined+bag')['token_accuracy_mean']:.0%}", flush=True)
        for s in run.sentences:
            sentences.append({"model": model, "text": s.text, "length": len(s.original), "masked": list(s.masked),
                              "bag_size": s.bag_size, "objective": s.loss,
                              **{name: {"tokens": vocabulary.tokens(d["ids"]), **d["scores"]}
                                 for name, d in s.decodings.items()}})
        for length in sorted({len(s.original) for s in run.sentences}):
            group = [s for s in run.sentences if len(s.original) == length]
            row = {"model": model, "length": length, "sentences": len(group), "seconds": seconds}
            for name in DECODINGS:
                row[f"{name} token_accuracy"] = float(np.mean([s.decodings[name]["scores"]["token_accuracy"]
                                                               for s in group]))
                row[f"{name} exact_match"] = float(np.mean([s.decodings[name]["scores"]["exact_match"]
                                                            for s in group]))
                row[f"{name} bleu"] = float(np.mean([s.decodings[name]["scores"]["bleu"] for s in group]))
            rows.append(row)
    return {"config": {"restarts": restarts, "iterations": iterations, "seed": seed, "models": list(models)},
            "rows": rows, "sentences": sentences}


def markdown_table(results: dict) -> str:
    """Token accuracy (exact-match rate) per model and length, for the four decodings."""
    lines = ["| model | L | nearest | nearest, bag | refined | refined, bag | wall s (model) |",
             "|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        cells = [f"{row[f'{name} token_accuracy']:.0%} ({row[f'{name} exact_match']:.0%})" for name in DECODINGS]
        lines.append(f"| {row['model']} | {row['length']} | " + " | ".join(cells) + f" | {row['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from dlg_jax.files import atomic_write_bytes, atomic_write_json, prepare_output_dir
    from dlg_jax.models.bert import TEXT_MODELS

    parser = argparse.ArgumentParser(prog="python -m dlg_jax.text_experiment", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="text-exp-out")
    parser.add_argument("--quick", action="store_true", help="bert-tiny only")
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args(argv)
    out = prepare_output_dir(args.out)
    models = ("bert-tiny",) if args.quick else tuple(TEXT_MODELS)
    started = time.perf_counter()
    results = run_experiment(models, args.restarts, args.iterations)
    results["wall_seconds"] = time.perf_counter() - started
    table = markdown_table(results)
    atomic_write_json(os.path.join(out, "text_experiment.json"), results)
    atomic_write_bytes(os.path.join(out, "text_experiment.md"), table.encode())
    print(table + f"wall {results['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
