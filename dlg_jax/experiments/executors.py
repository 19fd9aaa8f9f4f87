"""Executors: where the points of a sweep run. Each maps a function over items and yields
``(item, result)`` as results arrive; the caller (:func:`dlg_jax.experiments.sweep.run_points`) stores each result
as it comes, so the store never waits for the slowest point.

- ``local``: one after another in this process (compiled programs are shared between points).
- ``ray``: one Ray task per point on a Ray cluster (optional extra ``ray``). The tasks return their
  rows to this process, which writes the store, so workers need no access to the store's disk. Each
  worker must import the same dlg-jax (install it on every node, or let this executor ship the local
  checkout: ``PYTHONPATH`` of the task points at the directory that holds ``dlg_jax``).
"""

import os
from typing import Any, Callable, Iterable, Iterator

from dlg_jax.errors import DLGInputError, check_choice

EXECUTORS = ("local", "ray")


class LocalExecutor:
    """Run in this process, in order."""

    name = "local"

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        for item in items:
            yield item, fn(item)

    def close(self) -> None:
        pass


class RayExecutor:
    """One Ray task per item, ``cpus_per_task`` CPUs (and ``gpus_per_task`` GPUs) each.

    ``address``: a running cluster (``"auto"``, ``"ray://head:10001"``, ...); default ``$RAY_ADDRESS``,
    else a local instance with ``num_cpus`` CPUs that is shut down by :meth:`close`.
    ``compilation_cache``: a folder each task keeps JAX's persistent compilation cache in
    (:func:`dlg_jax.attack.compile_cache.enable_compilation_cache`; ``None``: off).
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, cpus_per_task: float = 1,
                 gpus_per_task: float = 0, compilation_cache: str | None = None):
        try:
            import ray
        except ImportError:
            raise DLGInputError("executor 'ray' needs Ray: pip install 'dlg-jax[ray]'") from None
        self.ray = ray
        address = address or os.environ.get("RAY_ADDRESS")
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        self.owned = not ray.is_initialized()
        if self.owned:
            ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                     log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": python_path}})
        self.options = {"num_cpus": cpus_per_task, "num_gpus": gpus_per_task, "max_retries": 1}
        self.compilation_cache = compilation_cache

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        remote = self.ray.remote(**self.options)(_task)
        pending = {remote.remote(fn, item, self.compilation_cache): item for item in items}
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            for ref in done:
                try:
                    result = self.ray.get(ref)
                except self.ray.exceptions.RayTaskError as error:
                    if isinstance(error.cause, DLGInputError):  # bad input: one line, as locally
                        raise DLGInputError(str(error.cause)) from None
                    raise
                yield pending.pop(ref), result

    def close(self) -> None:
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()


def _task(fn: Callable[[Any], Any], item: Any, compilation_cache: str | None) -> Any:
    """One Ray task: ``fn(item)``, with the compilation cache on when asked."""
    if compilation_cache is not None:
        from dlg_jax.attack.compile_cache import enable_compilation_cache

        enable_compilation_cache(compilation_cache)
    return fn(item)


def make_executor(name: str, **options) -> LocalExecutor | RayExecutor:
    """The executor ``name`` (:data:`EXECUTORS`); ``options`` go to :class:`RayExecutor`."""
    check_choice("executor", name, EXECUTORS)
    return LocalExecutor() if name == "local" else RayExecutor(**options)
