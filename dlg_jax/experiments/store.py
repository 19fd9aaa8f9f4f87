"""The results store: a directory of Parquet files, one per finished grid point, that any Parquet
reader can query (pyarrow, DuckDB, pandas, polars, Spark).

    STORE/manifest.json              {"format": "dlg-jax results store", "version": 1, ...}
    STORE/parts/<point id>.parquet   the rows of one finished point (one row per target)

A part is written whole to a temporary file in ``parts/``, flushed to disk and renamed over its final
name (:func:`dlg_jax.files.atomic_write_bytes`), so at any moment (a SIGKILL included) every part is
either absent or complete. A point is finished exactly when its part exists: resuming reruns the other
points, and a point run twice (two machines, or a crash after the rename) replaces its part with the
same name, so nothing is lost and nothing duplicated. Reading the store reads every part. Temporary
files of killed writers are ignored, and removed once they are a minute old.

A part damaged after it was written (a truncated copy, a disk error) does not count as finished: every
part is checked before it is trusted (its Parquet footer reads, its store version and point id are
this store's, and it holds the rows its point should have), and a damaged one is moved to
``STORE/damaged/`` with a one-line warning on stderr, so that ``--resume`` runs its point again.

Why Parquet files through pyarrow rather than one DuckDB database: a DuckDB file admits one writer
process at a time and a killed writer leaves a write-ahead log to replay, while part files need no
lock, so local processes and cluster workers can add points to one store concurrently; Parquet is
columnar and typed (lists of per-restart losses stay lists) and pyarrow is already installed with
tensorflow-datasets. DuckDB reads the store as it is::

    duckdb -c "SELECT model, avg(success) FROM 'STORE/parts/*.parquet' GROUP BY model"
"""

import io
import json
import os
import sys
import time
from typing import Mapping

from dlg_jax.errors import DLGInputError
from dlg_jax.files import atomic_write_bytes, atomic_write_json

FORMAT = "dlg-jax results store"
VERSION = 1
MANIFEST = "manifest.json"
PARTS = "parts"
DAMAGED = "damaged"
STALE_SECONDS = 60.0


class Store:
    """An open results store at ``path`` (created if absent or empty)."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True):
        self.path = os.fspath(path)
        self.parts = os.path.join(self.path, PARTS)
        manifest = os.path.join(self.path, MANIFEST)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise DLGInputError(f"store {self.path!r} is a file; give a directory")
        if not os.path.exists(manifest):
            if os.path.isdir(self.path) and [n for n in os.listdir(self.path) if not n.startswith(".")]:
                raise DLGInputError(f"{self.path!r} is not a dlg-jax results store (no {MANIFEST}) and not empty; "
                                    "give a new or empty directory")
            if not create:
                raise DLGInputError(f"no results store at {self.path!r} (no {MANIFEST})")
            try:
                os.makedirs(self.parts, exist_ok=True)
                atomic_write_json(manifest, {"format": FORMAT, "version": VERSION, "created": _now()})
            except OSError as error:
                raise DLGInputError(f"cannot create store {self.path!r}: {error.strerror or error}") from None
        self.manifest = read_manifest(manifest)
        try:
            os.makedirs(self.parts, exist_ok=True)
        except OSError as error:
            raise DLGInputError(f"store {self.path!r}: cannot use {self.parts!r}: {error.strerror or error}") from None
        self._remove_stale_temporaries()

    def check_writable(self) -> None:
        """:class:`DLGInputError` unless a part can be written now (a probe file is written the way a
        part is, then removed): called before any point is computed, so no computed point is lost to a
        store that cannot take it."""
        probe = os.path.join(self.parts, ".probe-writable")
        try:
            atomic_write_bytes(probe, b"")
            os.remove(probe)
        except OSError as error:
            raise DLGInputError(f"store {self.path!r} cannot be written ({error.strerror or error} in "
                                f"{self.parts!r}); make it writable or give another --store") from None

    def _remove_stale_temporaries(self) -> None:
        for name in os.listdir(self.parts):
            path = os.path.join(self.parts, name)
            try:
                if name.startswith(".tmp-") and time.time() - os.path.getmtime(path) > STALE_SECONDS:
                    os.remove(path)
            except OSError:  # another process renamed or removed it meanwhile
                pass

    def part_path(self, point_id: str) -> str:
        return os.path.join(self.parts, f"{point_id}.parquet")

    def finished(self, expected_rows: Mapping[str, int] | None = None) -> set[str]:
        """Ids of the points whose part exists and is intact (module docstring); ``expected_rows`` maps
        point ids to the number of rows their part must hold. Damaged parts are moved aside."""
        names = sorted(name[:-len(".parquet")] for name in os.listdir(self.parts)
                       if name.endswith(".parquet") and not name.startswith("."))
        intact = set()
        for point_id in names:
            problem = self._damage(point_id, (expected_rows or {}).get(point_id))
            if problem is None:
                intact.add(point_id)
            else:
                self._set_aside(point_id, problem)
        return intact

    def _damage(self, point_id: str, rows: int | None) -> str | None:
        """What is wrong with the part of ``point_id`` (``None``: nothing)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            metadata = pq.read_metadata(self.part_path(point_id))
        except (OSError, pa.ArrowInvalid) as error:
            return f"unreadable ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
        tags = metadata.metadata or {}
        if tags.get(b"dlg_jax_store_version", b"").decode() != str(VERSION):
            return "written by an incompatible version"
        if tags.get(b"point_id", b"").decode() != point_id:
            return "holds another point's rows"
        if rows is not None and metadata.num_rows != rows:
            return f"holds {metadata.num_rows} rows, its point has {rows}"
        return None

    def _set_aside(self, point_id: str, problem: str) -> None:
        damaged = os.path.join(self.path, DAMAGED)
        target = os.path.join(damaged, f"{point_id}.{time.strftime('%Y%m%dT%H%M%S')}.parquet")
        try:
            os.makedirs(damaged, exist_ok=True)
            os.replace(self.part_path(point_id), target)
        except FileNotFoundError:  # another process set it aside or replaced it meanwhile
            return
        except OSError as error:
            raise DLGInputError(f"store {self.path!r}: part {point_id}.parquet is damaged ({problem}) and cannot "
                                f"be moved aside: {error.strerror or error}") from None
        print(f"dlg-jax: warning: store {self.path!r}: part {point_id}.parquet is damaged ({problem}); moved to "
              f"{target!r}, its point counts as not run", file=sys.stderr)

    def write(self, point_id: str, rows: list[dict]) -> None:
        """Store the rows of one finished point atomically (replacing an earlier part of that point)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows).replace_schema_metadata(
            {"dlg_jax_store_version": str(VERSION), "point_id": point_id})
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        atomic_write_bytes(self.part_path(point_id), buffer.getvalue())

    def table(self):
        """Every stored row as one ``pyarrow.Table`` (columns unified across parts), sorted by point id."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for point_id in sorted(self.finished()):
            try:
                table = pq.read_table(self.part_path(point_id))
            except (OSError, pa.ArrowInvalid) as error:  # damaged between the check and the read
                raise DLGInputError(f"store {self.path!r}: part {point_id}.parquet cannot be read: "
                                    f"{str(error).splitlines()[0] if str(error) else error!r}") from None
            tables.append(table.replace_schema_metadata(None))
        if not tables:
            return pa.table({})
        return pa.concat_tables(tables, promote_options="permissive")

    def rows(self) -> list[dict]:
        """Every stored row as a dict."""
        return self.table().to_pylist()


def read_manifest(path: str) -> dict:
    """The manifest at ``path``; :class:`DLGInputError` unless this version can read the store."""
    try:
        with open(path) as handle:
            manifest = json.load(handle)
        fmt, version = manifest["format"], manifest["version"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DLGInputError(f"{path!r} is not a dlg-jax store manifest: {error}") from None
    if fmt != FORMAT or version != VERSION:
        raise DLGInputError(f"store {os.path.dirname(path)!r} was written by an incompatible version "
                            f"({fmt!r} version {version}; this dlg-jax reads version {VERSION}); "
                            "use a new --store or the dlg-jax that wrote it")
    return manifest


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
