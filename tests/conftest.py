"""Shared by the tests: `requires_gpu` skips a test where CuPy sees no CUDA GPU (CI has none); the
`tiny_run` fixture; and, under mutation testing only, which tests run against a mutant."""
import functools
import json
import os
import re
import signal
import sys

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


# ------------------------------------------------------------------------------- mutation testing
# mutation/run.sh (mutmut) runs, for each mutant, the tests that execute the mutated function. Of those,
# only the fast test files of the mutated module (below) run, fastest first, and none slower than
# MUTATION_SLOW_S (the end-to-end runs of train_gpt2.py in a subprocess, which CI runs): a killed
# mutant then costs its first failing test, and a full run fits in an hour on two cores.
LAYER_TESTS = ["test_layers.py", "test_gradient_rules.py", "test_numerics.py", "test_reference_model.py",
               "test_parallel.py"]
MUTATION_TESTS = {
    **{f"llmnp.{m}": LAYER_TESTS + ["test_model_details.py"]
       for m in ("encoder", "layernorm", "matmul", "attention", "gelu", "residual", "classifier")},
    "llmnp.model": LAYER_TESTS + ["test_model.py", "test_optimizer_step.py", "test_stochastic_rounding.py",
                                  "test_checkpoint.py", "test_model_details.py"],
    "llmnp.adamw": ["test_adamw.py", "test_stochastic_rounding.py", "test_optimizer_step.py", "test_parallel.py",
                    "test_readers_detail.py"],
    "llmnp.schedule": ["test_schedule.py", "test_schedule_formula.py"],
    "llmnp.data": ["test_data.py", "test_loader_ranks.py", "test_bad_input_readers.py", "test_checkpoint.py",
                   "test_readers_detail.py"],
    "llmnp.fileio": ["test_fileio.py", "test_file_checks.py", "test_headers.py", "test_bad_input_readers.py",
                     "test_readers_detail.py"],
    "llmnp.checkpoint": ["test_checkpoint.py", "test_headers.py", "test_file_checks.py",
                         "test_bad_input_readers.py", "test_export.py", "test_checkpoint_files.py"],
    "train_gpt2": ["test_optimizer_step.py", "test_llmc_flags.py", "test_train_gpt2.py", "test_bad_input_train.py",
                   "test_trainer_setup.py", "test_trainer_loop.py"],
}
MUTATION_SLOW_S = 3.0


def mutated_module():
    """The module of the mutant under test ("llmnp.gelu"), or None outside mutation testing (including
    mutmut's own clean and stats runs)."""
    mutant = re.match(r"(.+?)\.x[_\u01c1].*__mutmut_\d+$", os.environ.get("MUTANT_UNDER_TEST", ""))
    return mutant.group(1) if mutant else None


@functools.lru_cache(maxsize=None)
def recorded_seconds():
    """Each test's duration from mutmut's clean run (mutmut runs in its mutants/ folder)."""
    try:
        with open("mutmut-stats.json") as f:
            return json.load(f)["duration_by_test"]
    except (OSError, ValueError, KeyError):
        return {}


def pytest_collection_modifyitems(config, items):
    module = mutated_module()
    if module is None:
        return
    files = MUTATION_TESTS.get(module, [])
    seconds = recorded_seconds()
    keep = [item for item in items if os.path.basename(str(item.path)) in files
            and seconds.get(item.nodeid, 0.0) <= MUTATION_SLOW_S]
    kept = set(keep)
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = sorted(keep, key=lambda item: seconds.get(item.nodeid, 0.0))


@pytest.fixture(autouse=True)
def mutation_time_limit(request):
    """Under mutation testing only: a test taking 5 s + 5x its clean time fails, so that a mutant which
    makes the code loop forever costs seconds (and counts as caught), not mutmut's CPU-time limit."""
    if mutated_module() is None:
        yield
        return
    limit = 5.0 + 5.0 * recorded_seconds().get(request.node.nodeid, 0.0)

    def stop(signum, frame):
        raise TimeoutError(f"over {limit:.0f} s with a mutant")
    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def exact_fp32_products():
    """A test that runs train_gpt2 in this process may turn on TF32 products (its -f flag, process-wide,
    as in llm.c); the next test gets full fp32 products again."""
    yield
    runtime = sys.modules.get("llmnp.cuda.runtime")
    if runtime is not None:
        runtime.set_tf32(False)
