"""Data parallel on the CPU: `mpiexec -n 2` gives the same losses as one process with the same total batch
(gradient accumulation), with and without ZeRO-1, and the same val loss over the same val tokens."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import requires_gpu

from llmnp.data import write_shard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install -e '.[mpi]')")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("mpi")
    tokens = np.random.default_rng(0).integers(0, 50257, size=5000)
    write_shard(str(d / "train.bin"), tokens)
    write_shard(str(d / "val.bin"), tokens[:2000])
    return str(d / "train.bin"), str(d / "val.bin")


def train(shards, nproc, *flags, tmp=None, env=None):
    train, val = shards
    cmd = [sys.executable, os.path.join(ROOT, "train_gpt2.py"), "-e", "d1", "-i", train, "-j", val, "-t", "16",
           "-b", "2", "-x", "4", "-v", "2", "-s", "1000", "-sh", "0", "-l", "3e-3", "-c", "0.1", *flags]
    if nproc > 1:
        version = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True).stdout
        extra = ["--allow-run-as-root", "--oversubscribe"] if "Open MPI" in version or "OpenRTE" in version else []
        cmd = [MPIEXEC, "-n", str(nproc), *extra] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    return p


def numbers(out, pattern):
    return [float(x) for x in re.findall(pattern, out)]


@pytest.mark.parametrize("zero", ["0", "1"])
def test_two_processes_match_one_with_accumulation(shards, zero):
    one = train(shards, 1, "-d", "64", "-m", "4")
    two = train(shards, 2, "-d", "64", "-m", "2", "-z", zero)     # -m is per process: the same val tokens
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert "processes=2 grad_accum=1" in two.stdout and "processes=1 grad_accum=2" in one.stdout
    l1, l2 = numbers(one.stdout, r"\| loss (\S+) "), numbers(two.stdout, r"\| loss (\S+) ")
    n1, n2 = numbers(one.stdout, r"\| norm (\S+) "), numbers(two.stdout, r"\| norm (\S+) ")
    v1, v2 = numbers(one.stdout, r"val loss (\S+)"), numbers(two.stdout, r"val loss (\S+)")
    assert len(l1) == len(l2) == 4 and len(v1) == len(v2) == 3
    np.testing.assert_allclose(l2, l1, atol=2e-5)
    np.testing.assert_allclose(n2, n1, rtol=1e-4)
    np.testing.assert_allclose(v2, v1, atol=2e-5)
    assert two.stdout.count("val loss") == 3                             # rank 0 alone prints
    assert ("ZeRO-1: each process keeps AdamW's m and v for 1,667,552 of 3,335,104 parameters" in two.stdout) == (zero == "1")


def test_batch_that_does_not_split_over_processes_is_one_clear_error(shards):
    p = train(shards, 2, "-d", "48")
    assert p.returncode != 0
    # each process says it in one line (the launcher may interleave the two, and Open MPI adds a banner)
    ranks = re.findall(r"\[rank (\d)\] error: -d 48 is not a multiple of B\*T\*processes = 2\*16\*2 = 64", p.stderr)
    assert sorted(ranks) == ["0", "1"], p.stderr


def test_resume_with_another_process_count_says_so(shards, tmp_path):
    out = str(tmp_path / "run")
    assert train(shards, 1, "-o", out, "-x", "2").returncode == 0
    p = train(shards, 2, "-o", out, "-x", "2", "-y", "1")
    assert p.returncode != 0 and "resume with the same count" in p.stderr, p.stderr


@requires_gpu
@pytest.mark.parametrize("zero", ["0", "1"])
def test_two_processes_sharing_one_gpu_match_one(shards, zero):
    """On one GPU, two processes reduce through the host (NCCL refuses two ranks on one GPU)."""
    gpu = ["--device", "cuda", "--dtype", "fp32", "-f", "0"]       # exact fp32 products (no TF32)
    one_gpu = dict(os.environ, CUDA_VISIBLE_DEVICES="0")              # on a machine of several GPUs too
    one = train(shards, 1, "-d", "64", "-m", "4", *gpu, env=one_gpu)
    two = train(shards, 2, "-d", "64", "-m", "2", "-z", zero, *gpu, env=one_gpu)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert "gradients reduced by MPI through the host (NCCL needs one GPU per process)" in two.stdout
    np.testing.assert_allclose(numbers(two.stdout, r"\| loss (\S+) "), numbers(one.stdout, r"\| loss (\S+) "), atol=2e-5)
    np.testing.assert_allclose(numbers(two.stdout, r"val loss (\S+)"), numbers(one.stdout, r"val loss (\S+)"), atol=2e-5)


@requires_gpu
def test_zero1_bf16_model_file_holds_every_process_slice(shards, tmp_path):
    """bf16 with ZeRO-1: each process's fp32 master weights are current only in its slice, so the model
    file must gather them; it then equals the ZeRO-0 run's (the same arithmetic, bf16-rounded)."""
    from llmnp.checkpoint import load_model
    files = []
    for zero in ("0", "1"):
        out = tmp_path / f"z{zero}"
        p = train(shards, 2, "-d", "64", "-z", zero, "-o", str(out), "--device", "cuda", "--dtype", "bf16")
        assert p.returncode == 0, p.stderr
        files.append(load_model(str(out / "model_00000004.bin"))[1])
    z0, z1 = files
    assert np.mean(z0 != z1) < 1e-3          # a stale slice would differ in about half the parameters


def test_zero1_resume_reproduces_the_uninterrupted_run(shards, tmp_path):
    flags = ["-d", "64", "-z", "1", "-n", "2", "-x", "4", "-k", "cosine", "-q", "0.1", "-sh", "1"]
    full = train(shards, 2, *flags, "-o", str(tmp_path / "a"))
    b = tmp_path / "b"
    assert train(shards, 2, *flags, "-o", str(b)).returncode == 0
    for name in ("model_00000004.bin", "state_00000004_00000.bin", "state_00000004_00001.bin", "DONE_00000004"):
        os.remove(b / name)
    resumed = train(shards, 2, *flags, "-o", str(b), "-y", "1")
    assert full.returncode == 0 and resumed.returncode == 0, full.stderr + resumed.stderr
    assert "resumed" in resumed.stdout, resumed.stdout
    losses = numbers(resumed.stdout, r"\| loss (\S+) "), numbers(full.stdout, r"\| loss (\S+) ")[2:]
    assert losses[0] == losses[1], full.stdout + resumed.stdout + resumed.stderr
