"""Atomic file output: a file is either its old content or its complete new content, never half-written.

Each writer writes a temporary file in the target's directory, flushes it to disk, then ``os.replace``s
it over the target (atomic on POSIX and Windows).
"""

import json
import os
import tempfile
from typing import Any

from dlg_jax.errors import DLGInputError


def prepare_output_dir(path: str | os.PathLike) -> str:
    """Create ``path`` (and parents) if needed; :class:`DLGInputError` if it is a file or unwritable."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise DLGInputError(f"output directory {path!r} is a file; give a directory path")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise DLGInputError(f"cannot create output directory {path!r}: {error.strerror}") from None
    if not os.access(path, os.W_OK):
        raise DLGInputError(f"output directory {path!r} is not writable")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def atomic_write_json(path: str | os.PathLike, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_figure(path: str | os.PathLike, figure) -> None:
    """Save a matplotlib figure atomically (format from the file extension)."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format=os.path.splitext(os.fspath(path))[1].lstrip(".") or "png",
                   dpi=figure.dpi, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
