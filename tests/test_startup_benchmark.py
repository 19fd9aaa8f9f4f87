"""``python -m benchmarks.startup``: JAX's compile events summed per program; bad input is one line."""

import pytest

from benchmarks import startup


def test_events_are_summed_per_program_whatever_the_module_name():
    rows = startup.programs([("trace", "run_one", 0.5), ("lower", "jit(run_one)", 0.25),
                             ("compile", "jit(run_one)", 2.0), ("compile", "jit(run_one)", 1.0),
                             ("compile", "jit__uniform", 0.125)])
    assert rows == [{"program": "run_one", "trace": 0.5, "lower": 0.25, "compile": 3.0, "modules": 2, "total": 3.75},
                    {"program": "_uniform", "trace": 0.0, "lower": 0.0, "compile": 0.125, "modules": 1,
                     "total": 0.125}]


@pytest.mark.parametrize("argv", [["--commands", "train"], ["--commands", "attack", "attack"]])
def test_bad_commands_are_one_line_exit_2(argv, tmp_path, capsys):
    assert startup.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m benchmarks.startup: error: argument --commands") and err.count("\n") == 1
