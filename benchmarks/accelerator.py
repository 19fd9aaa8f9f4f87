"""One check of the device in use: is the attack right there, and how fast is it against PyTorch's best?

    python -m benchmarks.accelerator            # GPU/TPU: ~5 minutes on one H200; CPU: small settings
    python -m benchmarks.accelerator --quick    # CPU smoke run (no torch.compile), for the test suite

Writes ``benchmarks/results/accelerator-<device>.json`` (``<device>``: JAX's device kind, e.g.
``nvidia-h200``, or ``cpu``) and prints a Markdown table for docs/performance.md. Rows, all on JAX's device, at
the attack's default precision (``highest``: full float32) unless a row says otherwise:

- ``default attack``: what ``dlg-jax attack`` runs (colour image 0, LeNet, 8 restarts, 3000 L-BFGS
  iterations): recovered (PSNR >= 30 dB), PSNR, wall and compile seconds;
- ``precision``: ``T`` targets x ``R`` restarts at precision ``default`` and ``highest`` (on NVIDIA GPUs
  ``default`` is TF32: the trap this check exists for); targets recovered, mean PSNR;
- ``large attack``: ``T x R`` problems (1024 on an accelerator), restart-iterations/s;
- ``objective``: restart-evaluations/s of the objective + gradient at each ``R``, JAX against
  ``torch.func`` and ``torch.compile`` of it (compile seconds apart) and eager PyTorch, PyTorch on the
  same device with TF32 off (:func:`benchmarks.objective_throughput.compare_objective`);
- ``PyTorch DLG``: DLG's own procedure (``torch.optim.LBFGS``, one restart at a time), eager and with a
  ``torch.compile``d closure (:func:`benchmarks.attack_throughput.run_torch_dlg`), against the large
  attack's JAX throughput.

Needs nothing beyond jax (with CUDA on a GPU), flax, optax, torch and the project's pure-Python
dependencies (jaxopt, dm-pix).
"""

import re
import time

import numpy as np

from benchmarks import common

# (targets, restarts, iterations) of each attack row; (R, ...) of the objective rows; PyTorch DLG iterations.
SETTINGS = {
    "accelerator": dict(default_iterations=3000, precision=(8, 16, 3000), large=(8, 128, 3000),
                        objective=(1024, 8192), torch_iterations=600, repeats=5),
    "cpu": dict(default_iterations=3000, precision=(2, 4, 1500), large=(4, 16, 500),
                objective=(16, 128), torch_iterations=200, repeats=5),
    # quick: every attack row has the default attack's shape, so the rows share its compiled programs
    "quick": dict(default_iterations=200, precision=(1, 8, 100), large=(1, 8, 100),
                  objective=(8,), torch_iterations=40, repeats=2),
}
RECOVERED_DB = 30.0


def device_name() -> str:
    """JAX's first device kind as a file-name slug: ``"NVIDIA H200"`` -> ``"nvidia-h200"``; ``"cpu"``."""
    import jax

    kind = jax.devices()[0].device_kind if jax.default_backend() != "cpu" else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-")


def _attack_row(name: str, targets: int, restarts: int, iterations: int, precision: str) -> dict:
    """``run_dlg`` on the first ``targets`` colour images (as ``dlg-jax attack --targets T``)."""
    from dlg_jax.attack.engine import AttackConfig, RunOptions
    from dlg_jax.pipeline import run_dlg

    config = AttackConfig(restarts=restarts, iterations=iterations, precision=precision)
    started = time.perf_counter()
    run = run_dlg("lenet", "colour", targets=targets, config=config, run=RunOptions(snapshots=0))
    wall = time.perf_counter() - started
    psnr = np.asarray(run.metrics.slot_psnr).min(axis=1)  # every slot of a target
    result = run.result
    return {"row": name, "targets": targets, "restarts": restarts, "iterations": iterations, "precision": precision,
            "recovered": int(np.sum(psnr >= RECOVERED_DB)), "psnr_mean": float(np.mean(psnr)),
            "label_accuracy": float(run.metrics.summary()["label_accuracy"]),
            "wall_seconds": wall, "compile_seconds": result.compile_seconds, "run_seconds": result.run_seconds,
            "restart_iterations_per_second": result.restart_iterations / max(result.run_seconds, 1e-9)}


def run(args) -> dict:
    from benchmarks.attack_throughput import run_torch_dlg
    from benchmarks.objective_throughput import compare_objective

    settings = dict(SETTINGS["quick" if args.quick else "accelerator" if common.is_accelerator() else "cpu"])
    settings["repeats"] = args.repeats or settings["repeats"]
    torch, device = common.setup_torch(args)
    candidates = ("jax-reverse_over_forward", "torch-func", "torch-eager") + (() if args.quick else ("torch-compile",))
    attacks = [_attack_row("default attack", 1, 8, settings["default_iterations"], "highest")]
    targets, restarts, iterations = settings["precision"]
    attacks += [_attack_row(f"precision {p}", targets, restarts, iterations, p) for p in ("default", "highest")]
    attacks.append(_attack_row("large attack", *settings["large"], "highest"))
    objective, torch_dlg = {}, {}
    _write(args, settings, attacks, objective, torch_dlg, torch, device)
    if torch is not None:
        for r in settings["objective"]:
            objective[r] = compare_objective(r, device.type, repeats=settings["repeats"], seed=args.seed,
                                             candidates=candidates)
            _write(args, settings, attacks, objective, torch_dlg, torch, device)
        problem = common.make_problem("lenet", 1, 1, args.seed)
        for compiled in (False, True) if not args.quick else (False,):
            if compiled:
                run_torch_dlg(problem, device, 20, 1, args.seed, compiled=True)  # compile outside the timing
            out = run_torch_dlg(problem, device, settings["torch_iterations"], 1, args.seed, compiled=compiled)
            torch_dlg["compiled" if compiled else "eager"] = {
                key: out[key] for key in ("seconds", "restart_iterations", "evaluations",
                                          "restart_iterations_per_second", "evaluations_per_second")}
    return _write(args, settings, attacks, objective, torch_dlg, torch, device)


def _write(args, settings, attacks, objective, torch_dlg, torch, device) -> dict:
    """The result file of what has run so far (written after every section, so a run cut short keeps it)."""
    import jax

    large = attacks[-1]["restart_iterations_per_second"]
    payload = {
        "device": device_name(), "device_kind": jax.devices()[0].device_kind, "backend": jax.default_backend(),
        "settings": settings, "attacks": attacks, "objective": {str(r): rows for r, rows in objective.items()},
        "torch_dlg": torch_dlg,
        "attack_speedup_vs_torch_dlg": {name: large / row["restart_iterations_per_second"]
                                        for name, row in torch_dlg.items()},
        "precision": common.precision_record(torch, device), "environment": common.environment(torch),
    }
    payload["markdown"] = markdown(payload)
    path = common.write_results(args.out, f"accelerator-{payload['device']}", payload)
    print(payload["markdown"])
    print(f"wrote {path}", flush=True)
    return payload


def markdown(payload: dict) -> str:
    """The Markdown table of one accelerator check (docs/performance.md)."""
    lines = [f"| {payload['device_kind']} ({payload['environment']['date'][:10]}) | result |", "|---|---|"]
    for row in payload["attacks"]:
        lines.append(f"| {row['row']}: {row['targets']} targets x {row['restarts']} restarts x {row['iterations']} "
                     f"iterations, precision {row['precision']} | {row['recovered']}/{row['targets']} recovered, "
                     f"{row['psnr_mean']:.1f} dB; {row['restart_iterations_per_second']:,.0f} restart-it/s; "
                     f"compile {row['compile_seconds']:.1f} s |")
    for restarts, rows in payload["objective"].items():
        jax_rate = rows["jax-reverse_over_forward"]["restart_evaluations_per_second"]
        others = [(name, rows[name]) for name in ("torch-func", "torch-compile", "torch-eager") if name in rows]
        text = ", ".join(f"{name} {row['restart_evaluations_per_second']:,.0f} ({jax_rate / row['restart_evaluations_per_second']:.1f}x)"
                         + (f", compile {row['compile_seconds']:.0f} s" if row.get("compile_seconds") else "")
                         for name, row in others)
        lines.append(f"| objective at R = {restarts}, restart-evals/s | JAX {jax_rate:,.0f}; {text} |")
    for name, row in payload["torch_dlg"].items():
        lines.append(f"| PyTorch DLG procedure ({name}), one restart at a time | "
                     f"{row['restart_iterations_per_second']:,.0f} it/s ({row['evaluations_per_second']:,.0f} evals/s); "
                     f"JAX large attack {payload['attack_speedup_vs_torch_dlg'][name]:,.0f}x |")
    return "\n".join(lines)


def build_parser():
    parser = common.make_parser("accelerator", __doc__.splitlines()[0])
    parser.add_argument("--no-torch", action="store_true", help="JAX rows only")
    return parser


def main(argv: list[str] | None = None) -> int:
    return common.run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
