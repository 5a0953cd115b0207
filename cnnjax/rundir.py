"""Run directories: checked before anything long starts, one writer at a time, disk errors as one line.

A run (or a sweep) holds an advisory ``fcntl.flock`` on ``<dir>/.lock`` while it writes there. The kernel releases
the lock when its holder exits in any way (``kill -9`` included), so a stale lock file never blocks; a second
process on the same directory is refused with the first one's pid and command, written into the lock file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LOCK = ".lock"


class RunDirectoryError(ValueError):
    """A run directory that cannot be used, or a write that failed there; the message names the path and the fix."""


class WriteFailed(RunDirectoryError):
    """A write that failed (a full disk, an I/O error): it would fail for every run on that disk."""


def prepare(path: str | Path, flag: str = "--workdir") -> Path:
    """Creates the run directory ``path`` if missing and checks it can be written.

    Args:
      path: the directory.
      flag: how the user named it, for the message.

    Returns:
      ``path`` as a Path.

    Raises:
      RunDirectoryError: ``path`` is a file, cannot be created, or is not writable.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise RunDirectoryError(f"{flag}={path} is a file, not a directory; name a directory (created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), path)
        raise RunDirectoryError(
            f"{flag}={path} cannot be created: {blocker} is a file; choose a path whose parent folders are directories"
        ) from None
    except OSError as error:
        raise RunDirectoryError(
            f"{flag}={path} cannot be created ({error.strerror}); choose a directory you can write to"
        ) from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise RunDirectoryError(
            f"{flag}={path} is not writable ({error.strerror}); fix its permissions or choose another directory"
        ) from None
    return path


def _holder(lock_path: Path) -> str:
    """Who holds the lock, as its holder wrote it."""
    try:
        owner = json.loads(lock_path.read_text())
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner["started"]))
        return f"pid {owner['pid']} on {owner['host']}, started {started}: {owner['command']}"
    except (OSError, ValueError, KeyError):
        return "a process that has not yet written its name"


@contextlib.contextmanager
def exclusive(path: Path, flag: str = "--workdir") -> Iterator[None]:
    """Holds ``path``'s lock for the duration; raises RunDirectoryError naming the holder if another process has it."""
    lock_path = Path(path) / LOCK
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirectoryError(
                f"{flag}={path} is in use by another cnnjax process ({_holder(lock_path)}); wait for it to finish, "
                f"stop it, or use another {flag}"
            ) from None
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(owner).encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) reports a full disk or quota."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error):  # tensorstore's errors carry the message, not the errno
            return True
        error = error.__cause__ or error.__context__
    return False


def write_error(error: BaseException, path: Path, what: str, needed_bytes: int, intact: str) -> WriteFailed:
    """The one-line error for a failed write of ``what`` at ``path``.

    Args:
      error: the OSError (or the error wrapping it).
      path: the file or directory written.
      what: what was being written, e.g. 'checkpoint step 120'.
      needed_bytes: about how much the write needs.
      intact: what is still intact, e.g. 'the checkpoint at step 100 is intact'.

    Returns:
      The error to raise.
    """
    existing = next((p for p in [Path(path), *Path(path).parents] if p.exists()), Path("/"))
    if is_disk_full(error):
        free = shutil.disk_usage(existing).free
        problem = (f"no space left on the device of {existing}: it needs about {needed_bytes / 1e6:.1f} MB and "
                   f"{free / 1e6:.1f} MB are free")  # fmt: skip
    else:
        problem = f"{type(error).__name__}: {getattr(error, 'strerror', None) or error}"
    return WriteFailed(
        f"writing {what} to {path} failed ({problem}); {intact}. Free space or fix the disk, then run the same "
        "command again to resume, or use another --workdir"
    )
