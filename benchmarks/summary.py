"""Summary: the headline JAX-vs-PyTorch ratios against the project's targets, as JSON and a markdown table.

Reads ``benchmarks/results/<name>.json`` of every benchmark, running the quick version of those that are
missing (all of them with ``--rerun``), and writes ``summary.json``::

    {"summary": {"objective_speedup_vs_torch_eager": x, "objective_speedup_vs_torch_func": x,
                 "objective_speedup_vs_torch_compile": x, "attack_speedup_vs_torch_reference": x,
                 "attack_speedup_vs_torch_compile": x, "attack_speedup_vs_torch_lockstep": x,
                 "time_to_recovery_speedup": x,
                 "peak_fraction": x, ...},
     "targets": {metric: {"value": x, "target": t, "met": bool}}, "results": {benchmark: its JSON}}

Ratios are JAX / PyTorch at R = 128 restarts, LeNet, B = 1; ``peak_fraction`` is a fraction of 1.
Targets: objective >= 10x torch eager and >= 3x torch.func; full attack >= 10x the PyTorch
reference in restart-iterations/s and in time to recovery at an equal or better success rate;
>= 25% of the float32 matmul peak; objective >= ``torch.compile`` of the ``torch.func``
objective (1x) and full attack >= 3x the PyTorch procedure with a ``torch.compile``d closure.
``attack_speedup_vs_torch_lockstep``: the same lockstep algorithm in both frameworks (JAX / the faster of
eager and compiled PyTorch), so the framework's share of the attack's lead alone (>= 1x).

    python -m benchmarks.summary [--rerun]
"""

import json
import os

from benchmarks import (
    attack_throughput,
    common,
    objective_throughput,
    scaling,
    time_to_recovery,
)
from dlg_jax.errors import DLGInputError

NAME = "summary"
BENCHMARKS = {module.NAME: module for module in (objective_throughput, attack_throughput, time_to_recovery, scaling)}
TARGETS = {
    "objective_speedup_vs_torch_eager": 10.0,
    "objective_speedup_vs_torch_func": 3.0,
    "objective_speedup_vs_torch_compile": 1.0,
    "attack_speedup_vs_torch_reference": 10.0,
    "attack_speedup_vs_torch_compile": 3.0,
    "attack_speedup_vs_torch_lockstep": 1.0,
    "time_to_recovery_speedup": 10.0,
    "peak_fraction": 0.25,
}


def _load_or_run(name: str, out_dir: str, rerun: bool) -> dict:
    path = os.path.join(out_dir, f"{name}.json")
    if rerun or not os.path.exists(path):
        print(f"running python -m benchmarks.{name} --quick", flush=True)
        status = BENCHMARKS[name].main(["--quick", "--out", out_dir])
        if status != 0:
            raise DLGInputError(f"benchmarks.{name} failed with exit status {status}")
    with open(path) as handle:
        return json.load(handle)


def summarise(results: dict) -> dict:
    """The headline numbers out of the benchmarks' JSON payloads (missing ones are left out)."""
    objective = results["objective_throughput"]["headline"]
    attack = results["attack_throughput"]["headline"]
    recovery = results["time_to_recovery"]["headline"]
    summary = {
        "objective_speedup_vs_torch_eager": objective.get("speedup_vs_torch_eager"),
        "objective_speedup_vs_torch_func": objective.get("speedup_vs_torch_func"),
        "objective_speedup_vs_torch_compile": objective.get("speedup_vs_torch_compile"),
        "objective_chunked_speedup_vs_torch_compile": objective.get("chunked_speedup_vs_torch_compile"),
        "objective_jax_restart_evaluations_per_second": objective.get("jax_restart_evaluations_per_second"),
        "peak_fraction": objective.get("peak_fraction"),
        "attack_speedup_vs_torch_reference": attack.get("speedup_restart_iterations"),
        "attack_speedup_vs_torch_compile": attack.get("speedup_restart_iterations_vs_torch_compile"),
        "attack_speedup_vs_torch_lockstep": attack.get("speedup_vs_torch_lockstep"),
        "attack_torch_lockstep_vs_torch_reference": attack.get("torch_lockstep_vs_torch_reference"),
        "attack_speedup_evaluations": attack.get("speedup_evaluations"),
        "time_to_recovery_speedup": recovery.get("speedup"),
        "time_to_recovery_speedup_including_compile": recovery.get("speedup_including_compile"),
        "time_to_recovery_speedup_vs_torch_compile": recovery.get("speedup_vs_torch_compile"),
        "jax_success_rate": recovery.get("jax_success_rate"),
        "torch_success_rate": recovery.get("torch_success_rate"),
    }
    for key, ratios in results["scaling"]["headline"].items():
        for ratio_name, value in ratios.items():
            summary[f"scaling_{key}_{ratio_name}"] = value
    return {key: value for key, value in summary.items() if value is not None}


def check_targets(summary: dict) -> dict:
    """``{metric: {value, target, met}}``; time to recovery also needs a success rate not worse than PyTorch's."""
    checks = {}
    for metric, target in TARGETS.items():
        value = summary.get(metric)
        met = value is not None and value >= target
        if metric == "time_to_recovery_speedup":
            met = met and summary.get("jax_success_rate", 0.0) >= summary.get("torch_success_rate", 1.0)
        checks[metric] = {"value": value, "target": target, "met": bool(met)}
    return checks


def markdown(summary: dict, checks: dict) -> str:
    """The headline table (docs/benchmarks.md): the targeted metrics, then the other headline numbers."""
    lines = ["| metric | value | target | met |", "|---|---|---|---|"]
    for metric, check in checks.items():
        value = "n/a" if check["value"] is None else (
            f"{check['value']:.1%}" if metric == "peak_fraction" else f"{check['value']:.1f}x")
        target = f"{check['target']:.0%}" if metric == "peak_fraction" else f">= {check['target']:.0f}x"
        lines.append(f"| {metric} | {value} | {target} | {'yes' if check['met'] else 'no'} |")
    for metric, value in summary.items():
        if metric not in checks:
            lines.append(f"| {metric} | {value:.3g} | | |")
    return "\n".join(lines)


def run(args) -> dict:
    common.require_torch()
    results = {name: _load_or_run(name, args.out, args.rerun) for name in BENCHMARKS}
    summary = summarise(results)
    checks = check_targets(summary)
    payload = {"benchmark": NAME, "summary": summary, "targets": checks,
               "all_targets_met": all(c["met"] for c in checks.values()),
               "quick": {name: bool(r.get("quick")) for name, r in results.items()},
               "environment": common.environment(), "results": results}
    table = markdown(summary, checks)
    print(table)
    print(f"wrote {common.write_results(args.out, NAME, payload)}")
    return payload


def build_parser():
    parser = common.make_parser(NAME, "Headline JAX-vs-PyTorch ratios from the benchmark results.",
                                timing_options=False)
    parser.add_argument("--rerun", action="store_true", help="run every benchmark's quick version first")
    return parser


def main(argv: list[str] | None = None) -> int:
    return common.run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
