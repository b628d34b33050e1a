"""Writing files so that a reader never sees half of one: a temporary file beside the target,
then a rename (atomic on POSIX file systems)."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "write_text_atomic"]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: the process's file-creation mask, read once at import (mkstemp makes files 0600)
_UMASK = _read_umask()


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[Any]], None], *, binary: bool = True) -> Path:
    """Call ``write(stream)`` on a temporary file beside ``path``, then rename it to ``path``.

    Parent folders are created; the file gets the usual permissions (0666 minus the umask).
    On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        with open(name, "wb" if binary else "w") as stream:
            write(stream)
        os.chmod(name, 0o666 & ~_UMASK)
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda stream: stream.write(text), binary=False)


