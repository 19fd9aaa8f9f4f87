"""The package as a user meets it: the public names of the root and each subpackage, and importing any module
leaves the process's plotting backend alone."""

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import dlg_jax

SUBPACKAGES = ("attack", "victim", "data", "experiments", "cli", "models")


@pytest.mark.parametrize("package", ("", *SUBPACKAGES))
def test_public_names_resolve(package):
    module = importlib.import_module(f"dlg_jax.{package}" if package else "dlg_jax")
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{module.__name__}.{name}"


def test_importing_every_module_keeps_the_users_matplotlib_backend():
    modules = [m.name for m in pkgutil.walk_packages(dlg_jax.__path__, "dlg_jax.")
               if m.name not in ("dlg_jax.cli.__main__", "dlg_jax.victim.federation")]  # runs the CLI; needs flwr
    code = ("import importlib, matplotlib; matplotlib.use('svg')\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(matplotlib.get_backend())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "svg"
    assert len(modules) > 30


def test_the_documented_synopsis_is_the_parsers():
    from dlg_jax.cli.synopsis import with_synopsis

    path = Path(__file__).parents[1] / "docs" / "cli.md"
    text = path.read_text(encoding="utf-8")
    assert with_synopsis(text) == text, "docs/cli.md is stale: run python -m dlg_jax.cli.synopsis docs/cli.md"
