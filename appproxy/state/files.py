"""
Private files of the state directory (the cookie key ring, C{users.json}):
read only when no other user can read or write them, written atomically with
mode 0600.

Pure file I/O on the standard library; blocking, so daemons call it at start,
on reload or in a thread.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

__all__ = ["PrivateFileError", "read_private_file", "write_private_file"]

#: The mode of every private file appproxy writes.
PRIVATE_MODE = 0o600


class PrivateFileError(ValueError):
    """
    A private file cannot be used.

    @ivar problem: what is wrong, as a phrase to follow the file's name
        (C{"is readable by other users; chmod 600 it"}).
    """

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def describe_os_error(error: OSError) -> str:
    """The short text of C{error} (C{"No such file or directory"})."""
    return error.strerror or type(error).__name__


def read_private_file(path: str | os.PathLike[str]) -> bytes:
    """
    The contents of C{path}, a regular file that only its owner may read or
    write.

    @raise FileNotFoundError: if there is no such file (callers decide
        whether that is an error).
    @raise PrivateFileError: if it cannot be read, is not a regular file, or
        is readable or writable by group or others.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise PrivateFileError(f"cannot read: {describe_os_error(e)}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PrivateFileError("is not a regular file")
        if info.st_mode & 0o044:
            raise PrivateFileError("is readable by other users; chmod 600 it")
        if info.st_mode & 0o022:
            raise PrivateFileError("is writable by other users; chmod 600 it")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as e:
        raise PrivateFileError(f"cannot read: {describe_os_error(e)}") from None
    finally:
        os.close(fd)


def write_private_file(
    path: str | os.PathLike[str], data: bytes, *, exclusive: bool = False
) -> None:
    """
    Write C{data} to C{path} atomically, mode 0600: a reader sees the old file
    or the new one, never a part.

    @param exclusive: never replace an existing file: raise
        L{FileExistsError} instead (two processes creating the same file at
        once: one wins, the other reads what it wrote).
    @raise OSError: if the file cannot be written.
    """
    target = Path(path)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    temp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), PRIVATE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            try:
                # link() fails if the target exists: never clobber a file
                # another process has just written.
                os.link(temp, target)
            except FileExistsError:
                raise
            except OSError:
                # A file system without hard links.
                if target.exists():
                    raise FileExistsError(str(target)) from None
                os.replace(temp, target)
        else:
            os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    _sync_directory(target.parent)


def _sync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
