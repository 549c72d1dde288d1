"""fileio.write_atomic, in process: a failure at any moment leaves the old file (or none) and no
temporary file, and says which file and why; the temporary file sits beside the target (so the rename
never crosses file systems). test_faults.py does the same through real signals and full disks.
Also the folder checks a run makes before its first write (check_creatable, check_writable: a real
folder without write permission, /proc, which takes no new files) and io_error's cause text."""
import errno
import json
import os
import shutil
import signal
import tempfile

import numpy as np
import pytest

from llmnp import fileio
from llmnp.errors import UserError


def test_the_file_is_whole_and_the_temporary_file_sits_beside_it(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append((os.path.dirname(src), os.listdir(tmp_path / "out")))
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "out" / "x.bin"
    fileio.write_atomic(str(path), b"head", np.arange(3, dtype="<i4"), np.array([], dtype="<u2"))
    assert path.read_bytes() == b"head" + np.arange(3, dtype="<i4").tobytes()
    folder, present = seen[0]
    assert folder == str(tmp_path / "out") and len(present) == 1 and present[0].startswith(".x.bin.tmp")
    assert os.listdir(tmp_path / "out") == ["x.bin"]


@pytest.mark.parametrize("code, cause", [(errno.ENOSPC, "no space left on the device"),
                                         (errno.EACCES, "permission denied"),
                                         (errno.EROFS, "the file system is read-only")])
def test_a_failed_write_names_the_file_and_the_cause_and_keeps_the_old_file(tmp_path, monkeypatch, code, cause):
    path = tmp_path / "model.bin"
    path.write_bytes(b"old")

    def fail(src, dst):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(UserError) as e:
        fileio.write_atomic(str(path), b"new")
    assert str(e.value) == f"cannot write {path}: {cause}"
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.bin"]


def test_an_interrupt_mid_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "state.bin"

    class Stop(BaseException):
        pass

    def interrupt(src, dst):
        raise Stop
    monkeypatch.setattr(os, "replace", interrupt)
    with pytest.raises(Stop):                    # not turned into a UserError: the signal's own path
        fileio.write_atomic(str(path), b"x" * 100)
    assert os.listdir(tmp_path) == []


def test_folders(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(UserError, match=f"output folder {a_file} is a file, not a folder"):
        fileio.make_dir(str(a_file))
    with pytest.raises(UserError, match="cannot create the output folder .*: a part of the path is a file"):
        fileio.make_dir(str(a_file / "sub"))
    assert fileio.check_writable(str(tmp_path / "new" / "run"), "-o folder") == str(tmp_path / "new" / "run")
    assert os.listdir(tmp_path / "new" / "run") == []           # the probe file is gone
    with pytest.raises(UserError, match="cannot use the shard folder .*: .*f is a file, not a folder"):
        fileio.check_creatable(str(a_file / "x" / "y"), "shard folder")


def test_io_error_keeps_the_cause_of_an_error_it_has_no_words_for():
    """An OSError whose errno is not in CAUSES keeps the OS's own text (strerror), and one with no errno
    and no strerror at all (OSError("...")) keeps its message: the cause is never lost or "None"."""
    e = fileio.io_error("/x/y.bin", OSError("the disk is on fire"))
    assert isinstance(e, UserError) and "/x/y.bin" in str(e) and "the disk is on fire" in str(e)
    e = fileio.io_error("/x/y.bin", OSError(errno.EIO, os.strerror(errno.EIO)), "read")
    assert "/x/y.bin" in str(e) and os.strerror(errno.EIO) in str(e) and "None" not in str(e)


def test_check_creatable_passes_a_writable_place_and_creates_nothing(tmp_path):
    """A folder that does not exist yet under a writable one is fine: the path comes back and nothing is
    created (the check only looks at the nearest existing folder)."""
    target = str(tmp_path / "new" / "run")
    assert fileio.check_creatable(target) == target
    assert fileio.check_creatable(str(tmp_path)) == str(tmp_path)
    assert os.listdir(tmp_path) == []


def _unprivileged(fn):
    """fn() as a user whose permission bits count (root's are bypassed): in this process when not root,
    else in a forked child switched to uid/gid 65534 ("nobody"). Returns (exception name or "ok", text)."""
    if os.geteuid() != 0:
        try:
            return "ok", str(fn())
        except Exception as e:
            return type(e).__name__, str(e)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                 # the child: never returns into pytest
        try:
            os.close(r)
            try:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                out = ["ok", str(fn())]
            except PermissionError as e:
                out = ["skip", str(e)]
            except Exception as e:
                out = [type(e).__name__, str(e)]
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        raw = f.read()
    os.waitpid(pid, 0)
    kind, text = json.loads(raw)
    if kind == "skip":
        pytest.skip(f"cannot drop root here: {text}")
    return kind, text


def test_check_creatable_refuses_a_folder_without_write_permission():
    """A folder its user may read and enter but not write (mode 555, as user 65534: root ignores mode
    bits) is refused, at once, as a permission problem (its file system is not read-only). Existence
    alone is not enough: the check asks for write and search permission."""
    d = tempfile.mkdtemp()
    try:
        os.chmod(d, 0o555)
        kind, text = _unprivileged(lambda: fileio.check_creatable(os.path.join(d, "new", "run")))
        assert kind == "UserError", (kind, text)
        assert d in text and "permission denied" in text
    finally:
        os.chmod(d, 0o755)
        shutil.rmtree(d)


def test_read_only_is_the_mount_flag(tmp_path, monkeypatch):
    """_read_only tells a read-only mount from missing permission by statvfs's ST_RDONLY flag alone:
    False for the (writable) test folder; True once statvfs reports that flag for it (no read-only mount
    can be made here, so os.statvfs is replaced by one adding ST_RDONLY to that folder's real flags)."""
    assert fileio._read_only(str(tmp_path)) is False
    real, seen = os.statvfs, []

    class Flags:
        pass

    def statvfs(path):
        seen.append(path)
        flags = Flags()
        flags.f_flag = real(path).f_flag | os.ST_RDONLY
        return flags
    monkeypatch.setattr(os, "statvfs", statvfs)
    assert fileio._read_only(str(tmp_path)) is True and seen == [str(tmp_path)]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_check_writable_probes_inside_the_folder(tmp_path, monkeypatch):
    """The probe file is created in the folder checked, not in the working directory: /proc exists and
    takes no new files, even from root, so check_writable("/proc") is refused with a UserError naming
    /proc, while the (writable) working directory stays empty."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        fileio.check_writable("/proc", "-o folder")
    assert "/proc" in str(e.value)
    assert os.listdir(tmp_path) == []


def test_make_dir_names_the_folder_it_cannot_create(tmp_path):
    """The error for a folder that cannot be created names that folder (here a path through a file)."""
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(UserError) as e:
        fileio.make_dir(str(a_file / "sub"))
    assert str(a_file / "sub") in str(e.value)


def test_make_dir_when_another_process_creates_the_folder_first(tmp_path, monkeypatch):
    """Several processes of one run make the same output folder: one that finds the folder missing and
    then sees it appear (made by another process between its check and its makedirs) carries on. The
    race is made here by creating the folder right after make_dir's existence check."""
    target = str(tmp_path / "out" / "run")
    real_exists = os.path.exists

    def exists_then_created_elsewhere(path):
        seen = real_exists(path)
        if path == target and not seen:
            os.makedirs(target)
        return seen
    monkeypatch.setattr(os.path, "exists", exists_then_created_elsewhere)
    assert fileio.make_dir(target) == target
    assert os.path.isdir(target)


def test_open_file_never_blocks_on_a_fifo_swapped_in_after_its_check(tmp_path, monkeypatch):
    """open_file checks the path is a regular file, then opens it without blocking and checks again on
    the open file: a named pipe put in its place between the two (simulated by swapping the file for a
    FIFO inside os.stat) is refused at once, the descriptor closed. A blocking open would wait for a
    writer forever; a timer turns that into a failure after 2 s."""
    path = str(tmp_path / "model.bin")
    with open(path, "wb") as f:
        f.write(b"x" * 16)
    real_stat = os.stat

    def stat_then_swap(p, *args, **kwargs):
        st = real_stat(p, *args, **kwargs)
        if str(p) == path:
            os.remove(path)
            os.mkfifo(path)
        return st
    monkeypatch.setattr(os, "stat", stat_then_swap)

    def blocked(signum, frame):
        raise TimeoutError("open_file blocked opening a FIFO")
    old = signal.signal(signal.SIGALRM, blocked)
    signal.setitimer(signal.ITIMER_REAL, 2.0)
    try:
        with pytest.raises(UserError, match="named pipe"):
            fileio.open_file(path, "model file")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
