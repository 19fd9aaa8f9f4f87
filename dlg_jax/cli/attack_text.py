"""``dlg-jax attack-text``: recover a sentence, or a batch of sentences, from their masked-LM gradient;
print them as they emerge and write ``metrics.json`` and ``report.txt``."""

import argparse
import os
import time

from dlg_jax.cli.options import ProgressBar, add_compilation_cache, add_memory_budget, positive_int, wrote
from dlg_jax.environment import environment
from dlg_jax.errors import DLGInputError


def register(subparsers):
    from dlg_jax.models.bert import DEFAULT_TEXT_MODEL, MAX_LENGTH, TEXT_ACTIVATIONS
    from dlg_jax.text import TEXT_DUMMIES, TEXT_LABELS, text_attack_config

    defaults = text_attack_config()
    parser = subparsers.add_parser(
        "attack-text", help="recover sentences from the gradient of one masked-LM step",
        description="DLG on text: a BERT-style model takes one masked-LM step on a batch of SENTENCEs (one "
                    "gradient for all of them); the attack matches the shared gradient with dummy tokens "
                    "(weights over the bag of input tokens, or free word embeddings) and maps them to the nearest "
                    "tokens. Words outside the vocabulary are split into "
                    "WordPiece pieces; a character that maps to [UNK] is an error.")
    parser.add_argument("sentences", nargs="+", metavar="sentence",
                        help="the private sentences, one batch (English words, digits, punctuation)")
    parser.add_argument("--model", default=DEFAULT_TEXT_MODEL,
                        help=f"text model: bert-tiny, bert-small, bert-medium (default: {DEFAULT_TEXT_MODEL})")
    parser.add_argument("--activation", default="gelu", choices=tuple(TEXT_ACTIVATIONS),
                        help="encoder activation, twice differentiable (default: gelu)")
    parser.add_argument("--max-length", type=positive_int, default=MAX_LENGTH,
                        help=f"the model's longest sequence, with [CLS] and [SEP] (default: {MAX_LENGTH})")
    parser.add_argument("--restarts", type=positive_int, default=defaults.restarts,
                        help=f"random restarts (default: {defaults.restarts})")
    parser.add_argument("--iterations", type=positive_int, default=defaults.iterations,
                        help=f"L-BFGS iterations per restart (default: {defaults.iterations})")
    parser.add_argument("--dummy", default="bag", choices=TEXT_DUMMIES,
                        help="what is optimised: bag (weights over the bag of input tokens, read off the "
                             "embedding gradient, whose rows are matched too) or embeddings (free word "
                             "embeddings, DLG's) (default: bag)")
    parser.add_argument("--restrict-tokens", action=argparse.BooleanOptionalAction, default=True,
                        help="decode only to the tokens whose embedding-gradient row is non-zero, the bag of "
                             "tokens (default: on; --no-restrict-tokens: the whole vocabulary)")
    parser.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                        help="after nearest-token decoding, a greedy token search that keeps a change only if "
                             "it lowers the exact gradient distance (default: on)")
    parser.add_argument("--swaps", action=argparse.BooleanOptionalAction, default=True,
                        help="the refinement also swaps two tokens of a sentence or two masked labels (default: on)")
    parser.add_argument("--peel", action=argparse.BooleanOptionalAction, default=True,
                        help="a batch the refinement leaves unreproduced: keep the sentences the gradient "
                             "certifies, subtract their share and attack the rest again (bag dummy; default: on)")
    parser.add_argument("--distance", default="l2", choices=("l2", "tag"),
                        help="gradient matching: l2 (DLG) or tag (L2 + L1, TAG) (default: l2)")
    parser.add_argument("--labels", default="bias", choices=TEXT_LABELS,
                        help="masked tokens read off the decoder bias gradient (bias) or optimised (joint, DLG)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, the masking and the dummies")
    add_memory_budget(parser)
    add_compilation_cache(parser)
    parser.add_argument("--out", default="dlg-text-out", help="output directory (default: dlg-text-out)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)
    return parser


def run(args) -> int:
    import dataclasses

    from dlg_jax.attack.compile_cache import enable_compilation_cache
    from dlg_jax.data import vocabulary
    from dlg_jax.files import atomic_write_bytes, atomic_write_json, prepare_output_dir
    from dlg_jax.models.bert import TEXT_MODELS
    from dlg_jax.text import attack_batches, encode_batch, text_attack_config, text_run_options

    if args.model not in TEXT_MODELS:
        raise DLGInputError(f"model {args.model!r} is not a text model; text models: {', '.join(TEXT_MODELS)}")
    encode_batch(args.sentences, args.max_length)  # bad text fails before anything is written
    if not args.no_compilation_cache:
        enable_compilation_cache()
    config = text_attack_config(restarts=args.restarts, iterations=args.iterations, seed=args.seed,
                                distance=args.distance)
    out = prepare_output_dir(args.out)
    bar = ProgressBar(not args.quiet)
    started = time.perf_counter()
    try:
        attack = attack_batches([args.sentences], args.model, config, restrict=args.restrict_tokens,
                                refine=args.refine, swaps=args.swaps, labels=args.labels, dummy=args.dummy,
                                peel=args.peel,
                                activation=args.activation, max_length=args.max_length, progress=bar,
                                run=text_run_options(config.iterations, memory_budget=args.memory_budget))
    finally:
        bar.close()
    wall = time.perf_counter() - started
    batch, result = attack.batches[0], attack.results[0]
    scores = batch.scores
    several = len(batch.texts) > 1
    lines = [f"masked     positions {', '.join(map(str, batch.masked))} (known to the attacker)"]
    for i, sentence in enumerate(attack.sentences):
        slot = scores["assignment"][i]
        name = f" {i + 1}" if several else ""
        lines.append(f"original{name:<3}{' '.join(vocabulary.tokens(sentence.original))}")
        for iteration, ids in zip(batch.snapshot_iterations, batch.snapshots[:, slot]):
            lines.append(f"iter {iteration:>5} {' '.join(vocabulary.tokens(ids))}")
        lines.append(f"recovered  {' '.join(vocabulary.tokens(sentence.recovered))}"
                     + (f" (slot {slot + 1})" if several else ""))
        lines.append(f"text       {sentence.recovered_text!r} (original {vocabulary.decode(sentence.original)!r})")
    lines.append(f"token accuracy {scores['token_accuracy']:.0%}, exact match {scores['exact_match']:.0%}, "
                 f"BLEU {scores['bleu']:.1f}, ROUGE-L {scores['rougeL']:.2f}"
                 + (f", duplicates {scores['duplicates']}" if several else "")
                 + f"; objective {batch.loss:.2e}; bag of tokens {batch.bag_size}; "
                 f"wall {wall:.1f} s (compile {result.compile_seconds:.1f} s)")
    chosen = batch.decodings[batch.decoding]
    if args.refine:
        start = batch.decodings["nearest" + ("+bag" if args.restrict_tokens else "")]
        refined = batch.decodings["refined" + ("+bag" if args.restrict_tokens else "")]
        peeled = (f", then {chosen['rounds']} round(s) of sentence by sentence" if "rounds" in chosen else "")
        lines.append(f"gradient distance of the recovered tokens {chosen['distance']:.2e} after {refined['moves']} "
                     f"changes{peeled} (decoded {start['distance']:.2e}; |dW|^2 = {batch.gradient_norm2:.3g})")
    report = "\n".join(lines) + "\n"
    payload = {
        "command": "attack-text", "model": args.model, "activation": args.activation, "max_length": args.max_length,
        "restrict_tokens": args.restrict_tokens, "refine": args.refine, "swaps": args.swaps, "labels": args.labels,
        "dummy": args.dummy, "peel": args.peel, "decoding": batch.decoding,
        "config": dataclasses.asdict(config), "sentences": args.sentences, "vocabulary_size": batch.vocab.size,
        "original_tokens": [vocabulary.tokens(ids) for ids in batch.original],
        "recovered_tokens": [vocabulary.tokens(s.recovered) for s in attack.sentences],
        "recovered_texts": [s.recovered_text for s in attack.sentences],
        "slots": scores["assignment"], "masked_positions": list(batch.masked), "bag_size": batch.bag_size,
        "label_orderings": batch.orderings, "gradient_distance": chosen["distance"],
        "gradient_norm2": batch.gradient_norm2,
        "decoded_gradient_distance": batch.decodings["nearest" + ("+bag" if args.restrict_tokens else "")]["distance"],
        "scores": {key: value for key, value in scores.items() if key != "assignment"},
        "objective": batch.loss, "restart_losses": result.loss.tolist(),
        "snapshots": {int(i): [vocabulary.tokens(ids) for ids in step]
                      for i, step in zip(batch.snapshot_iterations, batch.snapshots)},
        "timing": {"wall_seconds": wall, "compile_seconds": result.compile_seconds,
                   "run_seconds": result.run_seconds, "restart_iterations": result.restart_iterations},
        "environment": environment(),
    }
    atomic_write_json(os.path.join(out, "metrics.json"), payload)
    atomic_write_bytes(os.path.join(out, "report.txt"), report.encode())
    print(report, end="")
    wrote([os.path.join(out, name) for name in ("metrics.json", "report.txt")])
    return 0
