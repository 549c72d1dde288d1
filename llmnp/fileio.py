"""Files: llm.c's 256-int32 header every one of its formats opens with, opening a user's file for
reading, and writing files so that a failure is one clear line and never half a file. Every reader of
llmnp opens through open_file, every writer (model and state checkpoints, token shards, eval files,
tokenizer files, exports, plots) goes through write_atomic.

- open_file(path, what), file_size(f): a regular file opened for reading, or one line saying why not.
- read_header / new_header: the header, magic and version checked.

- write_atomic(path, *chunks): bytes and NumPy arrays into a temporary file beside `path`, then one
  rename; a crash, a signal or a full disk leaves the old file (or none) and no temporary file.
- make_dir(path, what): the folder an output goes to, created if needed, with one line when it cannot
  be (a file in the way, no permission, a read-only file system).
- io_error(path, e, doing): the UserError for an OSError, naming the path and the cause in words.

Not here: any one format (checkpoint.py, data.py, tokenizer.py, hellaswag.py check their own).
"""
import errno
import os
import stat

import numpy as np

from llmnp.errors import UserError

HEADER_INTS = 256
HEADER_BYTES = 4 * HEADER_INTS

# OSError causes in the words a user acts on (the OS's own text where none is listed)
CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "the file is larger than this system allows",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder",
    errno.EEXIST: "a file of that name is in the way",
    errno.ENAMETOOLONG: "the name is too long",
}


def io_error(path, e, doing="write"):
    """UserError for an OSError met while doing `doing` ("write", "create the folder", ...) at path."""
    cause = CAUSES.get(e.errno) or e.strerror or str(e)
    return UserError(f"cannot {doing} {path}: {cause}")


def make_dir(path, what="output folder"):
    """Create the folder `path` (and its parents) unless it exists; one line when that fails or when
    `path` is a file."""
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise UserError(f"{what} {path} is a file, not a folder: give a folder path")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise io_error(path, e, f"create the {what}") from None
    return path


def check_creatable(path, what="output folder"):
    """Without creating anything: one line now if the folder `path` could not be made or written
    later (a file in the way, no write permission, a read-only file system)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"cannot use the {what} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot use the {what} {path}: {probe} is not writable "
                        f"({'read-only file system' if _read_only(probe) else 'permission denied'})")
    return path


def _read_only(path):
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def check_writable(path, what="output folder"):
    """make_dir, then prove a file can be created in it (permissions, read-only mounts), so a run
    learns at its start, not at its first checkpoint, that it could not save."""
    make_dir(path, what)
    probe = os.path.join(path, f".write_test{os.getpid()}")
    try:
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as e:
        raise io_error(path, e, f"write into the {what}") from None
    return path


def write_atomic(path, *chunks):
    """Write bytes / NumPy arrays (in order) to path through a temporary file in the same folder, then
    rename it over path. Any failure (full disk, permissions, a signal) removes the temporary file and,
    for OSErrors, raises one UserError naming path and cause; path is then as it was before."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"cannot write {path}: {folder} is a file, not a folder")
    make_dir(folder, "folder")
    if os.path.isdir(path):
        raise UserError(f"cannot write {path}: it is a folder")
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                if isinstance(chunk, np.ndarray):
                    # f.write (not ndarray.tofile): a short write then raises ENOSPC with its errno
                    chunk = memoryview(np.ascontiguousarray(chunk)).cast("B")
                f.write(chunk)
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise io_error(path, e) from None
    except BaseException:                        # Ctrl-C, SIGTERM's exception: no temporary file left
        _remove_quietly(tmp)
        raise
    return path


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


# ------------------------------------------------------------------------- headers (all formats)
def open_file(path, what):
    """open(path, "rb") for a reader of a user's file, or one UserError line saying why not: missing,
    a folder, a named pipe, device or socket (reading one can block forever: it is refused before it
    is opened, and opened without blocking in case it was swapped in meanwhile), no permission.
    Every reader goes through here and takes sizes from the open file (file_size), not the path."""
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except OSError as e:
        raise io_error(path, e, f"read the {what}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {path} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} {path} is {_file_kind(st.st_mode)}, not a regular file: give the file itself")
    return os.fdopen(fd, "rb")


def _file_kind(mode):
    for test, kind in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a plain file"


def file_size(f):
    """Size in bytes of the open file f (from open_file)."""
    return os.fstat(f.fileno()).st_size


def read_header(f, path, magic, versions, what):
    """The 256-int32 header of an llm.c file, magic and version checked: an int64 array."""
    raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise UserError(f"{path}: truncated {what} ({len(raw)} bytes, the header alone is {HEADER_BYTES})")
    header = np.frombuffer(raw, dtype="<i4").astype(np.int64)
    if header[0] != magic:
        raise UserError(f"{path}: bad magic {header[0]}, not a {what} (its magic is {magic})")
    if header[1] not in versions:
        raise UserError(f"{path}: {what} version {header[1]} is not supported "
                        f"(supported: {', '.join(map(str, versions))})")
    return header


def new_header(*fields):
    """256 little-endian int32: the given leading fields, then zeros."""
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:len(fields)] = fields
    return header
