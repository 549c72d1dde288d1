"""Writing files so that a failure is one clear line and never half a file: every writer of llmnp
(model and state checkpoints, token shards, eval files, tokenizer files, exports, plots, logs) goes
through here.

- write_atomic(path, *chunks): bytes and NumPy arrays into a temporary file beside `path`, then one
  rename; a crash, a signal or a full disk leaves the old file (or none) and no temporary file.
- make_dir(path, what): the folder an output goes to, created if needed, with one line when it cannot
  be (a file in the way, no permission, a read-only file system).
- io_error(path, e, doing): the UserError for an OSError, naming the path and the cause in words.

Not here: reading (each reader checks its own format; data.open_file opens what they read).
"""
import errno
import os

import numpy as np

from llmnp.errors import UserError

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
