"""get_lr at every step of several runs against llm.c's schedulers.h, written out here from
LLMC_FACTS.md (0-indexed step, N steps, W warmup, min = lr * q):
step < W -> lr * (step + 1) / W; else r = (step - W) / (N - W): cosine min + 0.5 (1 + cos(pi r)) (lr - min),
linear lr - r (lr - min), constant lr, wsd lr until floor(0.8 N), then min + (1 - sqrt(r')) (lr - min),
r' = (step - floor(0.8 N)) / (N - floor(0.8 N))."""
import math

import pytest

from llmnp.schedule import get_lr


def llmc(step, N, lr, W, q, kind):
    lo = lr * q
    if step < W:
        return lr * (step + 1) / W
    if kind == "constant":
        return lr
    if kind == "wsd":
        d = math.floor(0.8 * N)
        return lr if step < d else lo + (1 - math.sqrt((step - d) / (N - d))) * (lr - lo)
    r = (step - W) / (N - W)
    if kind == "cosine":
        return lo + 0.5 * (1 + math.cos(math.pi * r)) * (lr - lo)
    return lr - r * (lr - lo)


RUNS = [(10, 6e-4, 3, 0.1), (13, 1.0, 0, 0.0), (7, 2e-3, 7, 0.5), (20, 3e-4, 5, 0.25), (13, 1e-2, 2, 0.0),
        (5, 1.0, 1, 1.0), (2, 0.5, 1, 0.3)]


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant", "wsd"])
@pytest.mark.parametrize("N, lr, W, q", RUNS)
def test_every_step_of_a_run(kind, N, lr, W, q):
    for step in range(N):                               # the trainer's steps: 0 .. N-1
        want = llmc(step, N, lr, W, q, kind)
        assert get_lr(step, N, lr, W, q, kind) == pytest.approx(want, rel=1e-12, abs=0), (step, want)


def test_warmup_values():
    assert [get_lr(s, 100, 8.0, 4) for s in range(5)] == [2.0, 4.0, 6.0, 8.0, 8.0]
    assert [get_lr(s, 3, 3.0, 3, 0.0, "linear") for s in range(3)] == [1.0, 2.0, 3.0]   # all warmup


def test_past_the_last_step_stays_at_the_floor():
    for kind in ("cosine", "linear"):
        for step in (10, 11, 50):
            assert get_lr(step, 10, 1.0, 2, 0.2, kind) == pytest.approx(0.2, rel=1e-12)
    assert get_lr(12, 10, 1.0, 0, 0.2, "wsd") == pytest.approx(0.2, rel=1e-12)
    assert get_lr(5, 5, 1.0, 4, 0.5, "cosine") == pytest.approx(0.5, rel=1e-12)   # one decay step, done
    assert get_lr(6, 5, 1.0, 5, 0.5, "linear") == pytest.approx(0.5, rel=1e-12)   # warmup was the whole run


def test_wsd_decay_start_is_floor_of_80_percent():
    # N = 13: floor(10.4) = 10; N = 4: floor(3.2) = 3; N = 1: floor(0.8) = 0
    assert get_lr(9, 13, 1.0, 0, 0.0, "wsd") == 1.0 and get_lr(10, 13, 1.0, 0, 0.0, "wsd") == 1.0
    assert get_lr(11, 13, 1.0, 0, 0.0, "wsd") == pytest.approx(1 - math.sqrt(1 / 3), rel=1e-12)
    assert get_lr(3, 4, 1.0, 0, 0.0, "wsd") == 1.0
    assert get_lr(0, 1, 1.0, 0, 0.5, "wsd") == 1.0


def test_wsd_decay_starts_at_its_first_step():
    # llm.c: step < floor(0.8 N) -> lr, else the formula, so the formula's own value at r' = 0
    # (min + (lr - min), which rounds differently from lr for these numbers)
    lo = 0.3 * 0.1
    assert get_lr(8, 10, 0.3, 0, 0.1, "wsd") == lo + (1.0 - math.sqrt(0.0)) * (0.3 - lo) != 0.3
    assert get_lr(7, 10, 0.3, 0, 0.1, "wsd") == 0.3


def test_defaults_are_no_warmup_and_no_decay():
    assert get_lr(5, 10, 1.0, final_frac=0.0, kind="linear") == pytest.approx(0.5, rel=1e-12)   # W = 0
    assert get_lr(0, 10, 1.0, final_frac=0.0, kind="linear") == 1.0
    assert get_lr(9, 10, 2.0) == 2.0 and get_lr(0, 10, 2.0, 3) == pytest.approx(2.0 / 3)        # q = 1, cosine
    assert get_lr(2, 2, 1.0, 0, 0.2, "wsd") == pytest.approx(0.2, rel=1e-12)   # N - floor(0.8 N) = 1, past the end
