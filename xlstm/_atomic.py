"""Atomic file writes: a temporary file beside the target, renamed over it when complete.

Every file xlstm writes for a user (checkpoints, ``predict``'s output, ``export``'s ONNX
model) goes through :func:`replacing`, so that a reader of the target always sees the old
file or the complete new one, never a half-written one:

* The temporary file is ``<name>.<8 random characters>.tmp`` in the target's own folder
  (a rename within one filesystem is atomic), created with ``O_EXCL``.
* Its mode is that of a new file (``0o666`` less the umask, as ``open`` gives; not
  ``tempfile.mkstemp``'s ``0o600``), or the replaced file's own mode.
* When complete it is flushed, ``fsync`` ed, renamed with ``os.replace`` and the folder
  synced, so that the new content is durable before the rename is.
* On any error (``KeyboardInterrupt`` included) it is removed.

Leftovers.  A writer killed outright (``SIGKILL``, power loss) cannot remove its temporary
file; the next write of the same target does.  A writer holds an exclusive ``flock`` on
its temporary file from creation to rename, and the lock dies with the process, so a
temporary file whose lock can be taken is stale.  Two writers of one target may run at
once: between creating its file and locking it, a writer's file could be taken for stale
and deleted by the other's sweep, so after locking, each writer checks that its name
still leads to the file it holds, and starts again with a new name if it does not.  Where
there is no ``flock`` (Windows), temporary files older than an hour are stale.  Only
names of exactly this pattern, for this target, are ever touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows
    _fcntl = None  # type: ignore[assignment]

TEMPORARY_SUFFIX = r"\.[a-z0-9_]{8}\.tmp"
"""What :func:`replacing` appends to the target's name (``<name>.<8 characters>.tmp``)."""

STALE_SECONDS = 3600.0
"""Without file locks: temporary files older than this are stale."""

_ATTEMPTS = 100


def temporary_pattern(path: str | os.PathLike) -> re.Pattern[str]:
    """The names of ``path``'s temporary files (for tests and sweeps)."""
    return re.compile(re.escape(Path(path).name) + TEMPORARY_SUFFIX)


def _same_file(descriptor: int, name: Path) -> bool:
    """Whether ``name`` (not followed if a link) is the file open as ``descriptor``."""
    try:
        named = os.stat(name, follow_symlinks=False)
    except OSError:
        return False
    held = os.fstat(descriptor)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def remove_stale(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed writers of ``path`` left; return them.

    A file is stale when its lock can be taken (nobody holds it: its writer is gone), or,
    without ``flock``, when it is older than :data:`STALE_SECONDS`.
    """
    path = Path(path)
    pattern = temporary_pattern(path)
    try:
        candidates = [entry for entry in os.scandir(path.parent) if pattern.fullmatch(entry.name)]
    except OSError:
        return []
    removed = []
    for entry in candidates:
        with contextlib.suppress(OSError):
            if not entry.is_file(follow_symlinks=False):
                continue
            if _fcntl is None:  # pragma: no cover - Windows
                if time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_SECONDS:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
                continue
            descriptor = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                # Locked: a write in progress in another process (or this one).
                _fcntl.flock(descriptor, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
                # Still the same file under that name: then nobody else can hold it.
                if _same_file(descriptor, Path(entry.path)):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            finally:
                os.close(descriptor)
    return removed


def _create(path: Path) -> tuple[int, Path]:
    """A new temporary file for ``path``, open for writing, locked and still named so."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(_ATTEMPTS):
        temporary = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            descriptor = os.open(temporary, flags, 0o666)  # the kernel applies the umask
        except FileExistsError:
            continue
        if _fcntl is None:  # pragma: no cover - Windows
            return descriptor, temporary
        try:
            # Blocking: a sweep that took the lock first holds it only until it has
            # unlinked the file, and then the check below starts again.
            _fcntl.flock(descriptor, _fcntl.LOCK_EX)
            if _same_file(descriptor, temporary):
                return descriptor, temporary
        except BaseException:
            os.close(descriptor)
            temporary.unlink(missing_ok=True)
            raise
        os.close(descriptor)  # swept by another writer between create and lock: again
    msg = f"cannot create a temporary file beside {str(path)!r} ({_ATTEMPTS} attempts)"
    raise FileExistsError(msg)


def _sync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError, AttributeError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write ``path`` atomically: yields the temporary file, open ``"r+b"`` and empty.

    When the block ends without an error the file is synced and renamed to ``path``; on
    an error it is removed and the error propagates.  Stale temporary files of earlier,
    killed writes of ``path`` are removed first (see the module docstring).  The folder
    must exist.

    Examples
    --------
    >>> with replacing("out.bin") as file:  # doctest: +SKIP
    ...     file.write(data)
    """
    path = Path(path)
    remove_stale(path)
    descriptor, temporary = _create(path)
    try:
        file = os.fdopen(descriptor, "r+b")
    except BaseException:
        os.close(descriptor)
        temporary.unlink(missing_ok=True)
        raise
    try:
        with file:
            with contextlib.suppress(FileNotFoundError):
                mode = stat.S_IMODE(os.stat(path).st_mode)  # a replaced file keeps its mode
                if hasattr(os, "fchmod"):
                    os.fchmod(file.fileno(), mode)
                else:  # pragma: no cover - Windows
                    os.chmod(temporary, mode)
            yield file
            file.flush()
            os.fsync(file.fileno())
            if _fcntl is not None:
                # Renamed while still open and locked: no sweep takes it for stale.
                os.replace(temporary, path)
        if _fcntl is None:  # pragma: no cover - Windows renames closed files only
            os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


__all__ = ["STALE_SECONDS", "TEMPORARY_SUFFIX", "remove_stale", "replacing", "temporary_pattern"]
