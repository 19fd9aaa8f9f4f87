"""What every command shares: typed option parsers (one line on bad input, never NaN or inf), the
progress bar, the help text."""

import argparse
import math
import re
import sys

from dlg_jax.errors import DLGInputError, check_number, check_positive_int


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        return check_positive_int("value", int(text))
    except (ValueError, DLGInputError):
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _number(text: str, **bounds) -> float:
    try:
        return check_number("value", text, **bounds)
    except DLGInputError as error:
        allowed = str(error).split(" must be ", 1)[1].rsplit(", got ", 1)[0]
        raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}") from None


def finite_float(text: str) -> float:
    """Any finite number (``nan``, ``inf`` refused)."""
    return _number(text)


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _number(text, low=0.0, low_inclusive=False)


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    return _number(text, low=0.0)


class ProgressBar:
    """A tqdm bar over all chunks' iterations, showing the best objective and converged restarts.

    Its speed is the attack's own (iterations over the seconds spent running compiled blocks, from
    :class:`dlg_jax.attack.engine.Progress`), so that compiling is not counted and the first update already
    shows a real rate rather than tqdm's estimate from the microseconds since the bar appeared."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar, self.done = enabled, None, 0

    def __call__(self, progress):
        if not self.enabled:
            return
        from tqdm import tqdm

        total = progress.chunks * progress.iterations
        if self.bar is None:
            self.bar = tqdm(total=total, unit="it", file=sys.stderr, dynamic_ncols=True, desc="DLG",
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        position = progress.chunk * progress.iterations + progress.iteration
        self.bar.update(position - self.done)
        self.done = position
        rate = position / progress.run_seconds if progress.run_seconds > 0 else math.nan
        self.bar.set_postfix_str(f"{rate:.1f} it/s, chunk {progress.chunk + 1}/{progress.chunks} best "
                                 f"{progress.best_loss:.3g} converged {progress.converged}/{progress.problems} "
                                 f"failed {progress.failed}")

    def close(self):
        if self.bar is not None:
            self.bar.close()


class RunBars:
    """A fresh :class:`ProgressBar` for every attack of a command that runs several (an experiment's runs, a
    sweep's settings): :meth:`next` closes the last one (after printing ``message``, if any, as a status
    line) and opens the next; the object itself is the ``progress`` callback of the current run."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar = enabled, ProgressBar(False)

    def next(self, message: str | None = None) -> None:
        self.bar.close()
        if self.enabled and message:
            print(message, file=sys.stderr, flush=True)
        self.bar = ProgressBar(self.enabled)

    def __call__(self, progress) -> None:
        self.bar(progress)

    def close(self) -> None:
        self.bar.close()


class TrainingBar:
    """A tqdm bar over the victim's training steps, showing the last minibatch loss."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar = enabled, None

    def __call__(self, step: int, total: int, loss: float):
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True, desc="training")
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix_str(f"loss {loss:.3g}")

    def close(self):
        if self.bar is not None:
            self.bar.close()


def wrote(paths) -> None:
    """Tell the user which files a command wrote (one line)."""
    print(f"wrote: {', '.join(map(str, paths))}")


def add_memory_budget(parser: argparse.ArgumentParser) -> None:
    """``--memory-budget``: bytes per device for one attack step; every attack a command runs picks its chunk
    of (target, restart) problems so that the compiled step fits (:mod:`dlg_jax.attack.memory`)."""
    from dlg_jax.attack.memory import parse_bytes

    def byte_size(text: str) -> int:
        try:
            return parse_bytes(text)
        except DLGInputError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parser.add_argument("--memory-budget", type=byte_size, default=None,
                        help="bytes per device for one chunk of problems, e.g. 2GB, 512MiB (default: no limit; "
                             "chunks of --chunk-size)")


def plain(docstring_text: str) -> str:
    """Help text from a docstring: reStructuredText roles and literals (``:mod:`x```, ````x````) as plain words."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", docstring_text)
    return text.replace("``", "")


def add_compilation_cache(parser: argparse.ArgumentParser) -> None:
    """``--no-compilation-cache``: every command that compiles an attack keeps its programs in JAX's
    persistent cache (:mod:`dlg_jax.attack.compile_cache`) unless told not to."""
    from dlg_jax.attack.compile_cache import ENVIRONMENT_VARIABLE

    parser.add_argument("--no-compilation-cache", action="store_true",
                        help=f"do not use the persistent compilation cache (also: {ENVIRONMENT_VARIABLE}=off)")
