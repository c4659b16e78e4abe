"""Bytes, text or a whole directory → a file or directory that is complete or absent, never half-written.

Every writer of fxapprox (plans, ONNX files, JSON summaries, reports, plots) goes through here:
the content is written to a temporary name in the destination's own directory (same file system),
flushed to disk, then renamed over the destination with `os.replace`, which is atomic on POSIX
and Windows. A process killed part-way leaves the old file (or none) and at most a stray
`.<name>.tmp-*` entry, which the next write to the same destination removes. New files get the
mode a plain `open(..., "w")` would give them (0666 less the umask), not `mkstemp`'s 0600.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_path", "staged_path", "save_figure", "atomic_dir",
           "default_mode"]

_TMP = ".tmp-"


def default_mode(directory: bool = False) -> int:
    """The mode `open()` (0666) or `mkdir()` (0777) gives a new file or directory under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform/file system lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _clear_stale(path: Path) -> None:
    """Remove temporaries a killed writer left next to `path`."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}{_TMP}*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                stale.unlink()


def _temporary(path: Path, directory: bool) -> Path:
    _clear_stale(path)
    make = tempfile.mkdtemp if directory else tempfile.mkstemp
    made = make(prefix=f".{path.name}{_TMP}", suffix=path.suffix, dir=path.parent)
    if not directory:
        os.close(made[0])
        made = made[1]
    return Path(made)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to `path` (same suffix, for writers that look at it, e.g. matplotlib) to
    write into; on leaving the block without an error it replaces `path` at once, on an error it is
    removed and `path` stays as it was."""
    path = Path(path)
    tmp = _temporary(path, directory=False)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def staged_path(path: str | Path) -> Iterator[Path]:
    """`path`'s name inside a temporary sibling directory, for writers that add side files named after it
    (ONNX external data `<name>.data`) or that write, check and rewrite a file before it is final. On leaving
    the block without an error the side files, then `path` itself (the commit), replace those beside `path`;
    on an error nothing beside `path` changes."""
    path = Path(path)
    tmp = _temporary(path, directory=True)
    try:
        staged = tmp / path.name
        yield staged
        if not staged.is_file():
            raise FileNotFoundError(f"nothing was written to {staged}")
        for child in sorted(tmp.iterdir(), key=lambda c: c == staged):  # the main file last
            with open(child, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(child, default_mode())
            os.replace(child, path.parent / child.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (the old file, if any, stays until the new one is complete)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically."""
    return atomic_write_bytes(path, text.encode(encoding))


def save_figure(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """`fig.savefig(path, **kwargs)` (matplotlib), atomically: the format follows `path`'s suffix."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **kwargs)
    return path


def atomic_dir(path: str | Path, fill: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Directory `path` filled by `fill(tmp)` in a temporary sibling directory, then renamed into place.

    The directory is complete or absent: a writer killed inside `fill` leaves only the temporary
    sibling. `overwrite=True` replaces an existing `path` only once the new one is complete (the
    old one is renamed aside, the new one renamed in, the old one removed); a process killed
    between those two renames leaves `path` absent and the old directory as a `.<name>.tmp-*`
    sibling, never a mix of the two. Without `overwrite` an existing non-empty `path` is a
    `FileExistsError`; an existing empty one is replaced. The files `fill` writes get `open()`'s mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to replace it")
    tmp = _temporary(path, directory=True)
    try:
        os.chmod(tmp, default_mode(directory=True))
        fill(tmp)
        for child in tmp.iterdir():
            if child.is_file():  # on disk before the rename, and with open()'s mode (not a writer's 0600)
                with open(child, "rb+") as f:
                    os.fsync(f.fileno())
                os.chmod(child, default_mode())
        _fsync_dir(tmp)
        if path.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}{_TMP}", dir=path.parent))
            os.replace(path, old / "old")  # `old` is empty: the rename cannot clash
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
    return path
