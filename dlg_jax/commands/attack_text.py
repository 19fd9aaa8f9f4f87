"""``dlg-jax attack-text``: recover a sentence from its masked-LM gradient; print it as it emerges and
write ``metrics.json`` and ``report.txt``."""

import argparse
import os
import time

from dlg_jax.commands.options import ProgressBar, environment, positive_int, wrote
from dlg_jax.errors import DLGInputError


def register(subparsers):
    from dlg_jax.models.bert import DEFAULT_TEXT_MODEL, MAX_LENGTH, TEXT_ACTIVATIONS
    from dlg_jax.text_attack import TEXT_LABELS, text_attack_config

    defaults = text_attack_config()
    parser = subparsers.add_parser(
        "attack-text", help="recover a sentence from the gradient of one masked-LM step",
        description="DLG on text: a BERT-style model takes one masked-LM step on SENTENCE; the attack matches "
                    "the shared gradient with dummy word embeddings and maps them to the nearest tokens. "
                    "Words outside the vocabulary are split into WordPiece pieces; a character that maps to "
                    "[UNK] is an error.")
    parser.add_argument("sentence", help="the private sentence (English words, digits, punctuation)")
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
    parser.add_argument("--restrict-tokens", action=argparse.BooleanOptionalAction, default=True,
                        help="decode only to the tokens whose embedding-gradient row is non-zero, the bag of "
                             "tokens (default: on; --no-restrict-tokens: the whole vocabulary)")
    parser.add_argument("--refine", action=argparse.BooleanOptionalAction, default=True,
                        help="after nearest-token decoding, a greedy token search on the exact gradient "
                             "distance (default: on)")
    parser.add_argument("--labels", default="bias", choices=TEXT_LABELS,
                        help="masked tokens read off the decoder bias gradient (bias) or optimised (joint, DLG)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, the masking and the dummies")
    parser.add_argument("--out", default="dlg-text-out", help="output directory (default: dlg-text-out)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)
    return parser


def run(args) -> int:
    import dataclasses

    from dlg_jax import vocabulary
    from dlg_jax.files import atomic_write_bytes, atomic_write_json, prepare_output_dir
    from dlg_jax.text_attack import attack_sentences, text_attack_config

    from dlg_jax.models.bert import TEXT_MODELS

    if args.model not in TEXT_MODELS:
        raise DLGInputError(f"model {args.model!r} is not a text model; text models: {', '.join(TEXT_MODELS)}")
    vocabulary.encode(args.sentence, args.max_length)  # bad text fails before anything is written
    config = text_attack_config(restarts=args.restarts, iterations=args.iterations, seed=args.seed)
    out = prepare_output_dir(args.out)
    bar = ProgressBar(not args.quiet)
    started = time.perf_counter()
    try:
        attack = attack_sentences([args.sentence], args.model, config, restrict=args.restrict_tokens,
                                  refine=args.refine,
                                  labels=args.labels, activation=args.activation, max_length=args.max_length,
                                  progress=bar)
    finally:
        bar.close()
    wall = time.perf_counter() - started
    sentence, result = attack.sentences[0], attack.results[0]
    lines = [f"original   {' '.join(vocabulary.tokens(sentence.original))}",
             f"masked     positions {', '.join(map(str, sentence.masked))} (known to the attacker)"]
    for iteration, ids in zip(sentence.snapshot_iterations, sentence.snapshots):
        lines.append(f"iter {iteration:>5} {' '.join(vocabulary.tokens(ids))}")
    lines.append(f"recovered  {' '.join(vocabulary.tokens(sentence.recovered))}")
    lines.append(f"text       {sentence.recovered_text!r} (original {vocabulary.decode(sentence.original)!r})")
    scores = sentence.scores
    lines.append(f"token accuracy {scores['token_accuracy']:.0%}, exact match {bool(scores['exact_match'])}, "
                 f"BLEU {scores['bleu']:.1f}, ROUGE-L {scores['rougeL']:.2f}; objective {sentence.loss:.2e}; "
                 f"bag of tokens {sentence.bag_size}; wall {wall:.1f} s (compile {result.compile_seconds:.1f} s)")
    if args.refine:
        distance = sentence.decodings["refined" + ("+bag" if args.restrict_tokens else "")]["distance"]
        lines.append(f"gradient distance of the recovered tokens {distance:.2e} "
                     f"(|dW|^2 = {sentence.gradient_norm2:.3g})")
    report = "\n".join(lines) + "\n"
    payload = {
        "command": "attack-text", "model": args.model, "activation": args.activation, "max_length": args.max_length,
        "restrict_tokens": args.restrict_tokens, "refine": args.refine, "labels": args.labels,
        "config": dataclasses.asdict(config), "sentence": args.sentence,
        "original_tokens": vocabulary.tokens(sentence.original),
        "recovered_tokens": vocabulary.tokens(sentence.recovered), "recovered_text": sentence.recovered_text,
        "masked_positions": list(sentence.masked), "bag_size": sentence.bag_size, "scores": scores,
        "objective": sentence.loss, "restart_losses": result.loss.tolist(),
        "snapshots": {int(i): vocabulary.tokens(ids) for i, ids in zip(sentence.snapshot_iterations,
                                                                       sentence.snapshots)},
        "timing": {"wall_seconds": wall, "compile_seconds": result.compile_seconds,
                   "run_seconds": result.run_seconds, "restart_iterations": result.restart_iterations},
        "environment": environment(),
    }
    atomic_write_json(os.path.join(out, "metrics.json"), payload)
    atomic_write_bytes(os.path.join(out, "report.txt"), report.encode())
    print(report, end="")
    wrote([os.path.join(out, name) for name in ("metrics.json", "report.txt")])
    return 0
