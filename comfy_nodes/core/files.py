"""Opening a file a user named, safely: it must be a regular file, and finding out never blocks.

A named pipe opened for reading blocks until a writer comes, and a character device such as /dev/zero never
ends; both are refused before anything is read. The file is opened with O_NONBLOCK (which a FIFO honours at
open time) and checked with fstat on that same descriptor, so what is checked is what is read."""

from __future__ import annotations

import errno
import fcntl
import os
import stat

KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
         (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


class NotRegularFile(OSError):
    """The path is a named pipe, a device, a socket or a folder: StageTrace reads only regular files."""


def open_regular(path: str) -> int:
    """A descriptor (blocking again) of the regular file at path; NotRegularFile for anything else, OSError when
    it cannot be opened. The caller closes it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in KINDS if test(mode)), "not a regular file")
            raise NotRegularFile(errno.EINVAL, f"{kind}, not a regular file: StageTrace reads only regular files",
                                 path)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return fd
    except BaseException:
        os.close(fd)
        raise


def check_regular(path: str) -> None:
    """NotRegularFile (or OSError) unless path is a regular file that can be opened; never blocks."""
    os.close(open_regular(path))
