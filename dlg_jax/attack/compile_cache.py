"""JAX's persistent compilation cache, so that a configuration compiles once per machine, not once per run.

The attack's programs take 8 s to compile on a 2-core CPU and 17-30 s on a GPU; with the cache a second
run of the same configuration loads them from disk. The folder is ``$DLG_JAX_COMPILATION_CACHE`` if set,
else ``$XDG_CACHE_HOME/dlg-jax/xla`` (``~/.cache/dlg-jax/xla``). Setting ``DLG_JAX_COMPILATION_CACHE=off``
(or the CLI's ``--no-compilation-cache``) turns it off. JAX keys entries on the program, its compile
options, the backend and the jax/jaxlib versions, so a stale entry is never used.
"""

import os

import jax

ENVIRONMENT_VARIABLE = "DLG_JAX_COMPILATION_CACHE"
OFF = ("off", "0", "false", "no", "")


def cache_directory() -> str | None:
    """The cache folder the environment asks for, or ``None`` when it turns the cache off."""
    setting = os.environ.get(ENVIRONMENT_VARIABLE)
    if setting is not None:
        return None if setting.strip().lower() in OFF else os.path.expanduser(setting)
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(home, "dlg-jax", "xla")


def enable_compilation_cache(directory: str | None = None) -> str | None:
    """Point JAX's persistent compilation cache at ``directory`` (default: :func:`cache_directory`) and
    cache every program, however quickly it compiled, in this process and in the processes it starts
    (e.g. local Ray workers: JAX reads the same settings from their ``JAX_*`` environment variables).
    Returns the folder used, or ``None`` if off. Call it before the first compilation (JAX reads the
    setting once)."""
    directory = directory if directory is not None else cache_directory()
    if directory is None:
        return None
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    settings = {"jax_compilation_cache_dir": directory, "jax_persistent_cache_min_compile_time_secs": 0.0,
                "jax_persistent_cache_min_entry_size_bytes": 0}
    for name, value in settings.items():
        jax.config.update(name, value)
        os.environ[name.upper()] = str(value)
    return directory
