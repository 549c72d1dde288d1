"""Shared by the tests: `requires_gpu` skips a test where CuPy sees no CUDA GPU (CI has none)."""
import pytest


def gpu_available():
    try:
        import cupy
        return cupy.cuda.is_available()
    except Exception:          # no CuPy, no driver, no device: all mean "no GPU" here
        return False


requires_gpu = pytest.mark.skipif(not gpu_available(), reason="no CUDA GPU")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A model with its own 64-token vocabulary (not GPT-2's) and shards for it: the smallest real
    training run, for tests of what train_gpt2.py does with bad flags, signals and full disks.
    Returns the flags that train on them (-e, -i, -j, -b, -t)."""
    import numpy as np
    from llmnp import GPT2, GPT2Config
    from llmnp.data import write_shard
    d = tmp_path_factory.mktemp("tiny_run")
    config = GPT2Config(max_seq_len=32, vocab_size=64, padded_vocab_size=128, num_layers=2, num_heads=2, channels=16)
    GPT2(config, seed=1).save_checkpoint(str(d / "tiny.bin"))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, size=4000)
    write_shard(str(d / "train.bin"), tokens)
    write_shard(str(d / "val.bin"), tokens[:600])
    return ["-e", str(d / "tiny.bin"), "-i", str(d / "train.bin"), "-j", str(d / "val.bin"), "-b", "2", "-t", "16"]
