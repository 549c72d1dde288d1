"""fileio.write_atomic, in process: a failure at any moment leaves the old file (or none) and no
temporary file, and says which file and why; the temporary file sits beside the target (so the rename
never crosses file systems). test_faults.py does the same through real signals and full disks."""
import errno
import os

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
