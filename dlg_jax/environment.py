"""The record of where a result was computed, written beside every result (``metrics.json``, experiment and
benchmark JSON, sweep rows): date, host, CPU, load, thread settings, package versions and JAX's devices.
Rounding, and so an L-BFGS trajectory, depends on the CPU's instruction set and thread count, and a
timing on the machine's load: both are needed to read a number later."""

import datetime
import importlib.metadata
import os
import platform

PACKAGES = ("dlg-jax", "jax", "jaxlib", "flax", "optax", "jaxopt", "numpy", "torch")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "XLA_FLAGS")


def cpu_model() -> str:
    """The ``model name`` line of ``/proc/cpuinfo`` (or the platform's processor string)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_version(package: str) -> str | None:
    """The installed version of ``package`` (None when absent)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(torch=None) -> dict:
    """This process's machine and versions. ``torch``: the imported module, to record its thread counts.

    Keys: ``date`` (UTC, ISO), ``host``, ``python``, ``platform``, ``cpu``, ``versions`` (``PACKAGES``),
    ``backend``, ``device_kind``, ``devices`` (JAX's, as strings), ``threads`` (CPU count, affinity, the
    thread variables), ``load_average_1_5_15``.
    """
    import jax

    threads = {"cpu_count": os.cpu_count(),
               "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
               **{name: os.environ.get(name) for name in THREAD_VARIABLES}}
    if torch is not None:
        threads["torch_intra_op"] = torch.get_num_threads()
        threads["torch_inter_op"] = torch.get_num_interop_threads()
    devices = jax.devices()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "versions": {name: package_version(name) for name in PACKAGES},
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "devices": [str(d) for d in devices],
        "threads": threads,
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
