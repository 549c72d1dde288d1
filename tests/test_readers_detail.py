"""The exact lines a user reads when a file or folder cannot be used (open_file on a special file,
check_creatable / check_writable on a folder in the way or without write permission, with the default
label and with the caller's); the token loader's progress count and its state without shuffling; and
details of the optimizer: what bf16 and float32 weights receive from their master copy, its scratch
memory, the gradient norm's BLAS calls per 2^20 elements, the rounding hash taking one index."""
import contextlib
import os
import shutil
import socket
import stat
import tempfile
import warnings

import ml_dtypes
import numpy as np
import pytest
import tqdm

from llmnp import adamw, fileio
from llmnp.data import DataLoader, write_shard
from llmnp.errors import UserError
from test_stochastic_rounding import lowbias32_reference


# ------------------------------------------------------------------------------ special files
def _fifo(folder):
    path = os.path.join(folder, "pipe")
    os.mkfifo(path)
    return path


def _socket(folder):
    path = os.path.join(folder, "sock")
    with socket.socket(socket.AF_UNIX) as s:        # the socket file stays after the socket is closed
        s.bind(path)
    return path


@pytest.mark.parametrize("make, kind", [(_fifo, "a named pipe (FIFO)"),
                                        (lambda folder: os.devnull, "a character device"),
                                        (_socket, "a socket")], ids=["fifo", "character-device", "socket"])
def test_open_file_says_which_special_file_it_refuses(make, kind):
    """A named pipe, a character device (/dev/null) or a socket given as a file: one line naming the
    file, what it is, and what to give instead. (A short folder: a socket's path has a length limit.)"""
    folder = tempfile.mkdtemp()
    try:
        path = make(folder)
        with pytest.raises(UserError) as e:
            fileio.open_file(path, "token shard")
        assert str(e.value) == f"token shard {path} is {kind}, not a regular file: give the file itself"
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize("file_type, kind", [(stat.S_IFBLK, "a block device"),
                                             (0o150000, "not a plain file")], ids=["block-device", "unknown-type"])
def test_open_file_says_a_block_device_or_an_unknown_kind_is_refused(tmp_path, monkeypatch, file_type, kind):
    """A block device, and a file type none of the known ones (0o150000, a Solaris "door"), given as a
    file: one line naming the file and what it is. os.stat reports that type for the path (no block
    device can be counted on in a test folder), so nothing is opened."""
    path = str(tmp_path / "model.bin")
    real_stat = os.stat

    def fake_stat(p, *args, **kwargs):
        if str(p) == path:
            return os.stat_result((file_type | 0o600, 1, 1, 1, 0, 0, 0, 0, 0, 0))
        return real_stat(p, *args, **kwargs)
    monkeypatch.setattr(os, "stat", fake_stat)
    with pytest.raises(UserError) as e:
        fileio.open_file(path, "model file")
    assert str(e.value) == f"model file {path} is {kind}, not a regular file: give the file itself"


# ------------------------------------------------------------------------------------ folders
@contextlib.contextmanager
def _unwritable_folder():
    """A folder (mode 555) that the code inside the block may enter but not write into: as root, who
    bypasses mode bits, the real and effective uid are 65534 ("nobody") inside the block and 0 again
    after it (the saved uid stays 0, which allows the way back). In this process, not a child."""
    folder = tempfile.mkdtemp()
    os.chmod(folder, 0o555)
    switched = False
    try:
        if os.geteuid() == 0:
            try:
                os.setresuid(65534, 65534, 0)
            except (OSError, AttributeError) as e:
                pytest.skip(f"cannot switch to another user here: {e}")
            switched = True
        yield folder
    finally:
        if switched:
            os.setresuid(0, 0, 0)
        os.chmod(folder, 0o755)
        shutil.rmtree(folder)


def test_check_creatable_names_the_file_in_the_way_as_an_output_folder(tmp_path):
    """Without a label, the folder is called the output folder: a path through a file is refused with
    one line naming the path, the file in the way, and what it is."""
    a_file = tmp_path / "f"
    a_file.write_text("x")
    target = str(a_file / "run")
    with pytest.raises(UserError) as e:
        fileio.check_creatable(target)
    assert str(e.value) == f"cannot use the output folder {target}: {a_file} is a file, not a folder"


def test_check_creatable_refuses_a_folder_it_may_not_write_into():
    """A folder that exists but cannot be written into (entered, yes) is refused before anything is
    made: existing is not enough, it must allow writing and entering; the cause is a permission, not
    a read-only file system."""
    with _unwritable_folder() as folder:
        target = os.path.join(folder, "new", "run")
        with pytest.raises(UserError) as e:
            fileio.check_creatable(target)
    assert str(e.value) == (f"cannot use the output folder {target}: {folder} is not writable "
                            f"(permission denied)")


def test_check_writable_says_it_cannot_write_into_the_folder():
    """An existing folder the run may not write into: one line saying what could not be done, in which
    folder, and why; the default label is "output folder"."""
    with _unwritable_folder() as folder:
        with pytest.raises(UserError) as e:
            fileio.check_writable(folder)
        assert str(e.value) == f"cannot write into the output folder {folder}: permission denied"
        with pytest.raises(UserError) as e:
            fileio.check_writable(folder, "-o folder")
    assert str(e.value) == f"cannot write into the -o folder {folder}: permission denied"


@pytest.mark.parametrize("label", [None, "-o folder", "shard folder"])
def test_check_writable_names_a_file_in_the_way_with_the_callers_label(tmp_path, label):
    """A file where the folder should be: one line with the caller's label for the folder (the flag
    that named it), or "output folder" when none is given."""
    a_file = tmp_path / "out"
    a_file.write_text("x")
    with pytest.raises(UserError) as e:
        fileio.check_writable(str(a_file)) if label is None else fileio.check_writable(str(a_file), label)
    assert str(e.value) == f"{label or 'output folder'} {a_file} is a file, not a folder: give a folder path"


# ------------------------------------------------------------------------------------- loader
def test_the_token_check_counts_every_token_once_on_its_progress_bar(tmp_path, monkeypatch):
    """The check of every token id at the loader's start advances its progress bar by each shard's
    token count, once: the bar ends exactly at the total (a bar that overshoots never finishes)."""
    write_shard(str(tmp_path / "a.bin"), np.arange(300) % 50)
    write_shard(str(tmp_path / "b.bin"), np.arange(500) % 50)
    bars = []

    class Bar:
        def __init__(self, total, **kwargs):
            self.total, self.steps = total, []
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            self.steps.append(n)
    monkeypatch.setattr(tqdm, "tqdm", Bar)
    loader = DataLoader(str(tmp_path / "*.bin"), 2, 8, vocab_size=50)
    assert loader.num_tokens == 800
    assert [(bar.total, bar.steps) for bar in bars] == [(800, [300, 500])]


def test_a_loader_that_does_not_shuffle_has_no_shuffle_state(tmp_path):
    """Without shuffling, as in llm.c (intra_shard_indices NULL, no generator seeded): no random
    generator and no sample order, before and after reading; with shuffling, both exist."""
    write_shard(str(tmp_path / "a.bin"), np.arange(400) % 50)
    loader = DataLoader(str(tmp_path / "a.bin"), 2, 8, vocab_size=50)
    assert loader.rng is None and loader.intra_shard_indices is None
    loader.next_batch()
    assert loader.rng is None and loader.intra_shard_indices is None
    shuffled = DataLoader(str(tmp_path / "a.bin"), 2, 8, shuffle=True, vocab_size=50)
    assert shuffled.rng is not None and sorted(shuffled.intra_shard_indices) == list(range(399 // 16))


# -------------------------------------------------------------------------- optimizer
def _adamw_inputs(n, seed=4):
    rng = np.random.default_rng(seed)
    master = rng.standard_normal(n).astype(np.float32)
    grads = rng.standard_normal(n).astype(np.float32)
    m = (0.1 * rng.standard_normal(n)).astype(np.float32)
    v = (0.01 * rng.random(n)).astype(np.float32)
    return master, grads, m, v


STEP = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, t=3)


@pytest.mark.parametrize("seed, offset", [(None, None), (7, 1000)], ids=["defaults", "seed-and-offset"])
def test_bf16_weights_receive_their_master_rounded_stochastically(seed, offset):
    """bf16 weights with a float32 master copy: AdamW updates the master, and each weight i becomes the
    master's value with the hash's 16 random bits (of index offset + i and the seed; 0 and 0 when not
    given) added below its top 16 bits, then cut (written out here in Python integers)."""
    n = 64
    master, grads, m, v = _adamw_inputs(n)
    want_master, m2, v2 = master.copy(), m.copy(), v.copy()
    adamw.adamw_update(want_master, grads, m2, v2, **STEP)          # the float32 update alone
    params = master.astype(ml_dtypes.bfloat16)
    extra = {} if seed is None else {"seed": seed, "offset": offset}
    adamw.adamw_update(params, grads, m, v, **STEP, master=master, **extra)
    seed, offset = seed or 0, offset or 0
    want = [(int(b) + lowbias32_reference(offset + i, seed)) >> 16
            for i, b in enumerate(want_master.view(np.uint32))]
    assert np.array_equal(master, want_master)
    assert params.view(np.uint16).tolist() == want


def test_float32_weights_receive_their_master_exactly():
    """float32 weights with a float32 master copy (the CPU trains so): no rounding, each weight is
    exactly the updated master."""
    master, grads, m, v = _adamw_inputs(64)
    want_master, m2, v2 = master.copy(), m.copy(), v.copy()
    adamw.adamw_update(want_master, grads, m2, v2, **STEP)
    params = np.zeros(64, np.float32)
    adamw.adamw_update(params, grads, m, v, **STEP, master=master, seed=5, offset=9)
    assert np.array_equal(params.view(np.uint32), want_master.view(np.uint32))


@pytest.mark.parametrize("n, dtype", [(adamw.CHUNK, np.float32), (3 * adamw.CHUNK + 6, np.float32),
                                      (adamw.CHUNK + 2, np.float64)])
def test_adamw_scratch_is_one_block_of_the_buffers_dtype_per_thread(monkeypatch, n, dtype):
    """Two threads split the buffers in two halves; each allocates one scratch block of the buffers'
    dtype, of CHUNK elements or its half when that is shorter: a step on float32 buffers of 124M
    elements adds a few hundred KiB, not a copy of anything."""
    monkeypatch.setenv("LLMNP_NUM_THREADS", "2")
    rng = np.random.default_rng(1)
    p, g = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    m, v = np.zeros(n, dtype), np.zeros(n, dtype)
    sizes, real_empty = [], np.empty

    def empty(*args, **kwargs):
        a = real_empty(*args, **kwargs)
        sizes.append(a.nbytes)
        return a
    monkeypatch.setattr(np, "empty", empty)
    adamw.adamw_update(p, g, m, v, **STEP)
    half = min(adamw.CHUNK, n // 2) * np.dtype(dtype).itemsize
    assert sorted(sizes) == [half, half]


def test_the_gradient_norm_takes_one_dot_product_per_million_elements(monkeypatch):
    """A d12 gradient buffer holds 124M floats: the norm is one BLAS dot product per 2^20 elements
    (each large enough for OpenBLAS to spread over threads, about 120 calls), not one per small block,
    and the dot products are added up to the float64 sum of squares."""
    n = 2 * 2**20 + 12345
    g = np.random.default_rng(5).standard_normal(n).astype(np.float32)
    lengths, real_dot = [], np.dot

    def dot(a, b):
        lengths.append(a.size)
        return real_dot(a, b)
    monkeypatch.setattr(np, "dot", dot)
    got = adamw.global_norm_squared(g)
    assert lengths == [2**20, 2**20, 12345]
    want = float(np.sum(g.astype(np.float64) ** 2))
    assert abs(got - want) < 1e-5 * want


@pytest.mark.parametrize("index", [np.uint64(3 * 2**40 + 99), np.array(2**32 + 5, dtype=np.uint64)],
                         ids=["numpy-scalar", "0-d-array"])
def test_rounding_bits_of_a_single_index_give_the_hash_without_a_warning(index):
    """rounding_bits of one index (a NumPy scalar or a 0-d array, as a loop over elements passes it)
    wraps its 32-bit products silently, as the hash means to, and gives the lowbias32 hash's bits."""
    for seed in (0, 0x9E3779B1):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = adamw.rounding_bits(index, seed)
        assert int(got) == lowbias32_reference(int(index), seed)


def test_open_file_names_what_it_could_not_read(tmp_path, monkeypatch):
    """A file that exists but cannot be opened: one line naming what the file is for, the path and why."""
    path = tmp_path / "shard.bin"
    path.write_bytes(b"\0" * 8)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(UserError) as e:
        fileio.open_file(str(path), "token shard")
    assert str(e.value) == f"cannot read the token shard {path}: permission denied"


def test_write_atomic_names_the_folder_it_could_not_create(tmp_path):
    """A file where a folder of the path should be: the folder write_atomic had to create is named."""
    (tmp_path / "f").write_bytes(b"")
    folder = tmp_path / "f" / "sub"
    with pytest.raises(UserError) as e:
        fileio.write_atomic(str(folder / "x.bin"), b"1")
    assert str(e.value) == f"cannot create the folder {folder}: a part of the path is a file, not a folder"
