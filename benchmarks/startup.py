"""Start-up and compilation: where a command's seconds go before and around the attack, program by program.

Each command runs twice in a fresh Python process: **cold**, with an empty persistent compilation cache,
and **warm**, with the cache the cold run filled (what a user's second run of the same configuration
sees). Inside the process a listener on JAX's monitoring events records, for every program JAX builds,
the seconds spent

- ``trace``: tracing the Python function to a jaxpr (``/jax/core/compile/jaxpr_trace_duration``);
- ``lower``: lowering the jaxpr to a StableHLO module (``.../jaxpr_to_mlir_module_duration``);
- ``compile``: XLA compiling it, or loading it from the persistent cache (``.../backend_compile_duration``),

keyed by the program's name (the jitted function's name; its XLA module is ``jit(<name>)``). The
process also records its import time (``import dlg_jax.cli.main``) and the command's wall time.
Programs are summed over their instances (one name may be traced for several shapes); ``programs`` counts
the distinct compiled modules.

    python -m benchmarks.startup [--commands attack attack-text] [--out DIR]
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks import common

NAME = "startup"
COMMANDS = {
    "attack": ["attack", "--quiet"],
    "attack-text": ["attack-text", "please send the password to the office", "--quiet"],
}
EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace",
          "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
          "/jax/core/compile/backend_compile_duration": "compile"}
TOP = 8  # programs listed per run, by total seconds


def child(argv: list[str], report: str, imported: float) -> None:
    """Run ``dlg-jax argv`` in this process (which took ``imported`` seconds to import the CLI) and write its
    events and timings to ``report`` (JSON)."""
    import jax

    from dlg_jax.cli.main import main

    events = []

    def listen(event, duration, **kwargs):
        if event in EVENTS:
            events.append((EVENTS[event], str(kwargs.get("fun_name", "?")), float(duration)))

    jax.monitoring.register_event_duration_secs_listener(listen)
    started = time.perf_counter()
    status = main(argv)
    wall = time.perf_counter() - started
    with open(report, "w") as handle:
        json.dump({"status": status, "import_seconds": imported, "command_seconds": wall, "events": events}, handle)


def programs(events: list) -> list[dict]:
    """Per program name: its trace / lower / compile seconds summed, and how many modules it compiled;
    largest total first."""
    table: dict[str, dict] = {}
    for stage, name, seconds in events:
        name = name.removeprefix("jit_").removeprefix("jit(").removesuffix(")")
        row = table.setdefault(name, {"program": name, "trace": 0.0, "lower": 0.0, "compile": 0.0, "modules": 0})
        row[stage] += seconds
        row["modules"] += stage == "compile"
    rows = sorted(table.values(), key=lambda r: -(r["trace"] + r["lower"] + r["compile"]))
    for row in rows:
        row["total"] = row["trace"] + row["lower"] + row["compile"]
    return rows


def measure(command: str, cache: str, out: str) -> dict:
    """One run of ``command`` in a fresh process with the compilation cache in ``cache``."""
    with tempfile.TemporaryDirectory() as scratch:
        report = os.path.join(scratch, "report.json")
        argv = [*COMMANDS[command], "--out", os.path.join(out, command)]
        code = ("import time; started = time.perf_counter(); import dlg_jax.cli.main; "
                "imported = time.perf_counter() - started; from benchmarks.startup import child; "
                f"child({argv!r}, {report!r}, imported)")
        environment = {**os.environ, "DLG_JAX_COMPILATION_CACHE": cache}
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=environment, stdout=subprocess.DEVNULL,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        process = time.perf_counter() - started
        with open(report) as handle:
            result = json.load(handle)
    rows = programs(result.pop("events"))
    totals = {stage: sum(r[stage] for r in rows) for stage in ("trace", "lower", "compile")}
    return {**result, "process_seconds": process, "programs": len(rows),
            "modules": sum(r["modules"] for r in rows), **{f"{k}_seconds": v for k, v in totals.items()},
            "by_program": rows}


def run(args) -> dict:
    runs = []
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
        for command in args.commands:
            for state in ("cold", "warm"):
                row = {"command": command, "cache": state, **measure(command, os.path.join(cache, command), out)}
                runs.append(row)
                print(f"{command:12s} {state}: process {row['process_seconds']:5.1f} s (import "
                      f"{row['import_seconds']:.1f} s, command {row['command_seconds']:.1f} s); {row['modules']} "
                      f"modules of {row['programs']} programs: trace {row['trace_seconds']:.1f} s, lower "
                      f"{row['lower_seconds']:.1f} s, compile/load {row['compile_seconds']:.1f} s", flush=True)
                for program in row["by_program"][:TOP]:
                    print(f"    {program['program'][:40]:40s} x{program['modules']:<3d} trace {program['trace']:5.2f}"
                          f"  lower {program['lower']:5.2f}  compile {program['compile']:5.2f}", flush=True)
    payload = {"benchmark": NAME, "config": {"commands": {c: COMMANDS[c] for c in args.commands}},
               "environment": common.environment(), "runs": runs}
    print(f"wrote {common.write_results(args.out, NAME, payload)}")
    return payload


def build_parser():
    parser = common.make_parser(NAME, "Start-up and compilation time per program, cold and warm cache.",
                                timing_options=False)
    parser.add_argument("--commands", nargs="+", action=common.Distinct, type=common.one_of("command", tuple(COMMANDS)),
                        default=tuple(COMMANDS), help=f"one or more of {', '.join(COMMANDS)} (default: all)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return common.run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
