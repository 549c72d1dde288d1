import math

import pytest

from llmnp.schedule import get_lr


def test_warmup_then_cosine_to_final_fraction():
    lr, N, W, q = 6e-4, 100, 10, 0.1
    assert get_lr(0, N, lr, W, q) == pytest.approx(lr / 10)
    assert get_lr(9, N, lr, W, q) == pytest.approx(lr)
    assert get_lr(10, N, lr, W, q) == pytest.approx(lr)                     # r = 0
    assert get_lr(55, N, lr, W, q) == pytest.approx(lr * q + 0.5 * (lr - lr * q))   # r = 1/2: halfway
    assert get_lr(100, N, lr, W, q) == pytest.approx(lr * q)                # r = 1
    lrs = [get_lr(s, N, lr, W, q) for s in range(W, N + 1)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_linear_constant_wsd_and_default_final_fraction():
    assert get_lr(50, 100, 1.0, 0, 0.0, "linear") == pytest.approx(0.5)
    assert get_lr(77, 100, 1.0, 0, 0.0, "constant") == 1.0
    assert get_lr(79, 100, 1.0, 0, 0.0, "wsd") == 1.0
    assert get_lr(90, 100, 1.0, 0, 0.0, "wsd") == pytest.approx(1 - math.sqrt(0.5))
    assert get_lr(50, 100, 3e-4) == 3e-4                                   # q = 1.0: no decay
    with pytest.raises(ValueError):
        get_lr(0, 10, 1.0, kind="step")
