"""Atomic file writes: a failed write never clobbers the previous file, nor leaks.

The new content goes to a temporary file beside the target, named after the target, this host
and this process (``.<target>.<host>.<pid>.<random>.tmp``), and is renamed over the target once
complete. A process killed mid-write (kill -9, power loss) cannot clean up after itself, so every
save first removes the temporaries of the same target whose process on this host is gone.

The target keeps its mode when it exists; a new one gets the mode the umask gives (as
``open(path, "w")`` would). A symlink is written through: its final target is replaced, the link
stays.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
import stat
from pathlib import Path

_SUFFIX = ".tmp"


def temporary_name(target_name: str) -> str:
    """The name of a temporary file for ``target_name`` made by this process on this host."""
    return f".{target_name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}{_SUFFIX}"


def owner_of(name: str, target_name: str) -> tuple[str, int] | None:
    """(host, pid) of the process that made temporary ``name`` for ``target_name``, or None
    when ``name`` is not one of our temporaries of that target."""
    prefix = f".{target_name}."
    if not (name.startswith(prefix) and name.endswith(_SUFFIX)):
        return None
    parts = name[len(prefix):-len(_SUFFIX)].rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporaries of ``path`` left by processes of this host that no longer run."""
    host, removed = socket.gethostname(), []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        owner = owner_of(entry.name, path.name)
        if owner is None or owner[0] != host or _running(owner[1]):
            continue
        with contextlib.suppress(FileNotFoundError):  # another save may have removed it first
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` (the final target when ``path`` is a symlink); on
    success fsync it and rename it over the target (then fsync the folder), on failure delete
    it and leave the target as it was."""
    path = Path(os.path.realpath(path))
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory; name a file to write", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.parent / temporary_name(path.name)
    # created like open(path, "w") would create it: mode 0o666 less the umask
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    try:
        with contextlib.suppress(FileNotFoundError):
            mode = stat.S_IMODE(os.stat(path).st_mode)  # an existing file keeps its mode
        yield tmp
        os.chmod(tmp, mode)  # the caller's writer may have made the file anew with its own mode
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
