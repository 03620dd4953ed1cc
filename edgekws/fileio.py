"""Atomic file writes: a file appears under its name only once it is complete.

Writers open a temporary file in the destination folder, write, flush and fsync, then ``os.replace`` it over the
destination, so a reader (or a process restarted after a kill) sees either the previous file or the whole new one,
never a torn one. On any error the temporary file is removed.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_json", "fsync_dir", "json_default", "sha256", "sha256_file"]


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on a clean exit it replaces ``path``."""
    if mode not in ("wb", "w", "w+b"):
        raise ValueError(f"atomic_open writes only; mode {mode!r} is not supported")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def json_default(o: Any) -> Any:
    """JSON for numpy scalars/arrays and paths."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    with atomic_open(path, "w") as fh:
        json.dump(obj, fh, indent=2, default=json_default)
        fh.write("\n")
    return Path(path)


def fsync_dir(d: str | os.PathLike) -> None:
    """Flush a directory's entries (a rename into it, a new file) to disk."""
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(data: bytes = b"") -> Any:
    """A sha256 hash object (``update``, ``hexdigest``) started with ``data``.

    The interpreter's built-in implementation when it has one: :mod:`hashlib` loads OpenSSL's libcrypto for it,
    about 4 MB resident, which a device that checks a bundle's files and then listens for weeks does not need (the
    signature check brings its own copy of OpenSSL)."""
    try:
        from _sha2 import sha256 as impl  # type: ignore[import-not-found]  # Python >= 3.12
    except ImportError:
        try:
            from _sha256 import sha256 as impl  # type: ignore[import-not-found,no-redef]  # Python <= 3.11
        except ImportError:
            from hashlib import sha256 as impl  # type: ignore[assignment]
    return impl(data)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
