"""The memory estimate against the measured peak resident set of a process that trains (CPU), for d6,
d12 and d24 at two batch sizes each; the disk and batch arithmetic; the refusal; the time estimate."""
import json
import subprocess
import sys

import numpy as np
import pytest

from llmnp import GPT2Config
from llmnp.errors import UserError
from llmnp.params import CLASSIFIER_ROWS
from llmnp.memory import (check_fits, checkpoints_on_disk, duration, estimate, eta_line, largest_batch,
                          model_bytes, predict_step_ms, step_flops, training_bytes)

# One training step in a fresh process, in the order that reaches a run's peak: AdamW's update runs before
# the forward and backward (on zero gradients), so that m and v exist while backward holds its largest
# temporaries, as in every step after the first (the update itself adds only block-sized temporaries);
# then the process's peak RSS (VmHWM) against the estimate.
STEP = """
import json, sys
import numpy as np
from llmnp import GPT2, GPT2Config
from llmnp.memory import estimate, peak_rss_bytes
name, B, T, r = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
config = GPT2Config.preset(name)
model = GPT2(config, init=False, recompute=r)      # weights written by the update below
rng = np.random.default_rng(0)
x, y = (rng.integers(0, config.vocab_size, (B, T)).astype(np.int32) for _ in range(2))
model.zero_grad()
model.update(1e-4, 0.9, 0.95, 1e-8, 0.1, 1)
model.forward_backward(x, y)
print(json.dumps({"measured": peak_rss_bytes(), "predicted": estimate(config, B, T, "fp32", r).peak_bytes}))
"""


@pytest.mark.parametrize("name, B, T, recompute", [
    ("d6", 1, 64, 1), ("d6", 4, 128, 0),
    ("d12", 1, 32, 1), ("d12", 2, 64, 0),
    ("d24", 1, 16, 1), ("d24", 2, 32, 1),
])
def test_estimate_within_10_percent_of_measured_peak_rss(name, B, T, recompute):
    out = subprocess.run([sys.executable, "-c", STEP, name, str(B), str(T), str(recompute)],
                         capture_output=True, text=True, check=True).stdout
    r = json.loads(out.splitlines()[-1])
    ratio = r["predicted"] / r["measured"]
    print(f"{name} B={B} T={T} -r {recompute}: predicted {r['predicted'] / 2**20:.0f} MiB, "
          f"measured {r['measured'] / 2**20:.0f} MiB, ratio {ratio:.3f}")
    assert 0.9 <= ratio <= 1.1


def test_rows_add_up_to_the_tables():
    config = GPT2Config.preset("d12")
    est = estimate(config, 4, 64, "fp32", recompute=1)
    rows = {label: nbytes for label, nbytes, _ in est.rows}
    n = 124_475_904
    assert rows["parameters"] == 4 * n
    assert rows["gradients"] == 4 * n + 50304 * 768 * 4          # + the classifier's sum over its row blocks
    assert rows["AdamW m, v"] == 8 * n and rows["master weights"] == 0
    assert rows["logits"] == 4 * 64 * 50304 * 4
    assert est.peak_bytes == sum(rows.values())
    # the buffers (no runtime, no temporaries) are training_bytes' count
    # one layer's activation gradients: dresidual, dln, datty (C each), dqkv (3C), dfch (4C)
    temporaries = rows["scratch"] - 4 * 4 * 64 * (3 * 768 + 3 * 768 + 4 * 768)
    assert est.peak_bytes - rows["runtime"] - temporaries == training_bytes(config, 4, 64, np.float32, np.float32, 1)
    assert est.model_bytes == model_bytes(config, np.float32, np.float32)
    text = "\n".join(est.lines())
    for word in ("parameters", "gradients", "AdamW", "master weights", "activations", "logits", "scratch",
                 "predicted peak", "checkpoint on disk"):
        assert word in text


def test_bf16_and_zero1_divide_what_they_divide():
    config = GPT2Config.preset("d12")
    n = 124_475_904
    one = {l: b for l, b, _ in estimate(config, 8, 1024, "bf16", 1, device="cuda").rows}
    four = {l: b for l, b, _ in estimate(config, 8, 1024, "bf16", 1, processes=4, zero_stage=1, device="cuda").rows}
    assert one["parameters"] == 2 * n and one["master weights"] == 4 * n and one["AdamW m, v"] == 8 * n
    assert four["AdamW m, v"] == 2 * n and four["master weights"] == 4 * n      # master weights stay whole
    assert four["gradients"] == 2 * n + 2 * n // 4 + 4 * 50304 * 768             # + the reduce-scatter slice
    assert four["activations"] == one["activations"] and four["logits"] == one["logits"] == 8192 * 50304 * 2
    big = {l: b for l, b, _ in estimate(config, 64, 1024, "bf16", 1, device="cuda").rows}
    assert big["logits"] == CLASSIFIER_ROWS * 50304 * 2                          # a block of rows, not B*T
    r0 = {l: b for l, b, _ in estimate(config, 8, 1024, "bf16", 0, device="cuda").rows}
    assert r0["activations"] - one["activations"] == 11 * 8 * 1024 * 4 * 768 * 2   # (L-1) GELU outputs kept
    r2 = {l: b for l, b, _ in estimate(config, 8, 1024, "bf16", 2, device="cuda").rows}
    assert one["activations"] - r2["activations"] == 2 * 11 * 8 * 1024 * 768 * 2    # and (L-1) ln1, ln2
    w0 = estimate(config, 8, 1024, "bf16", 1, device="cuda", master_weights=False, num_steps=1)
    assert dict((l, b) for l, b, _ in w0.rows)["master weights"] == 0 and w0.model_bytes == 2 * n
    assert w0.disk[0][1] == (1024 + 2 * n) + (1024 + 8 * n + 2536)                 # no master in the state


def test_checkpoint_disk():
    assert checkpoints_on_disk(0, 20, 0) == (1, 1)              # -n 0: the last step only
    assert checkpoints_on_disk(100, 1000, 0) == (10, 10)
    assert checkpoints_on_disk(100, 1050, 0) == (11, 11)        # and the last step
    assert checkpoints_on_disk(100, 1000, 3) == (10, 3)
    config = GPT2Config.preset("d12")
    est = estimate(config, 4, 64, "fp32", checkpoint_every=100, num_steps=1000, checkpoints_kept=3)
    n = 124_475_904
    one = (1024 + 4 * n) + (1024 + 8 * n + 2536)
    assert est.disk[0][1] == one and est.disk_total == 3 * one
    gpu = estimate(config, 4, 1024, "bf16", processes=8, zero_stage=1, device="cuda", num_steps=10)
    assert gpu.disk[0][1] == (1024 + 2 * n) + 8 * (1024 + 12 * n // 8 + 2536)   # m, v, master: the shard's


def test_largest_batch_and_refusal(monkeypatch):
    config = GPT2Config.preset("d12")
    est = estimate(config, 64, 1024, "bf16", device="cuda")
    budget = estimate(config, 10, 1024, "bf16", device="cuda").peak_bytes + 1
    assert largest_batch(budget, config, 1024, dtype="bf16", device="cuda") == 10
    assert largest_batch(1, config, 1024, dtype="bf16", device="cuda") == 0
    monkeypatch.setattr("llmnp.memory.available_bytes", lambda device: budget - est.runtime_bytes - est.model_bytes)
    with pytest.raises(UserError, match=r"-b 10 is the largest that fits"):
        check_fits(est, allocated=est.model_bytes)
    check_fits(estimate(config, 10, 1024, "bf16", device="cuda"), allocated=est.model_bytes)   # fits: silent
    monkeypatch.setattr("llmnp.memory.available_bytes", lambda device: 0)
    with pytest.raises(UserError, match="not even -b 1"):
        check_fits(est)


def test_time():
    config = GPT2Config.preset("d12")
    # the products are 6 flops per weight per token, llm.c's 6N without wpe and the layernorms ...
    products = step_flops(config, 4, 64) - 7 * 2 * 4 * 64 * 64 * 768 * 12
    weights = 124_475_904 - 1024 * 768 - 12 * (4 * 768 + 3 * 768 + 768 + 4 * 768 + 768) - 2 * 768
    assert products == 6 * 4 * 64 * weights
    assert step_flops(config, 4, 64, grad_accum_steps=2) == 2 * step_flops(config, 4, 64)
    tiny = GPT2Config.tiny(vocab_size=256, max_seq_len=64, num_layers=2, num_heads=2, channels=64)
    ms, text = predict_step_ms(tiny, 2, 64)
    assert ms > 0 and "ms/step" in text and "GFLOP/s" in text
    assert duration(41.2) == "41s" and duration(187) == "3m07s" and duration(3725) == "1h02m"
    line = eta_line(10, 110, [5.0] + [0.5] * 9)
    assert line.startswith("time: 10 of 110 steps in 10s, 50s to go at 500 ms/step (ETA ")
