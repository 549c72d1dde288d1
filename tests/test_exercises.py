"""llmnp.exercises.check_backward: passes a right backward, names the wrong gradient of a planted
mistake, falls back to the solution of an exercise not written yet, and catches a wrong shape."""
import numpy as np
import pytest

from llmnp.exercises import ExerciseError, check_backward


def layernorm(x, w, b):
    norm = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    return norm * w + b


def layernorm_backward(dout, x, w, b, planted=False):
    rstd = 1 / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    norm = (x - x.mean(-1, keepdims=True)) * rstd
    dnorm = dout * w
    dx = dnorm - norm * (dnorm * norm).mean(-1, keepdims=True)
    if not planted:                                   # the planted mistake: the mean term left out
        dx -= dnorm.mean(-1, keepdims=True)
    return dx * rstd, (dout * norm).sum((0, 1)), dout.sum((0, 1))


def inputs():
    rng = np.random.default_rng(1)
    return dict(x=rng.normal(size=(2, 3, 5)), w=rng.normal(size=5), b=rng.normal(size=5))


def test_right_backward_passes(capsys):
    assert check_backward(layernorm, layernorm_backward, inputs(), ("x", "w", "b")) is layernorm_backward
    assert capsys.readouterr().out.count(" ok") == 3


def test_planted_mistake_is_named(capsys):
    def planted(dout, x, w, b):
        return layernorm_backward(dout, x, w, b, planted=True)

    with pytest.raises(ExerciseError, match="dx wrong"):
        check_backward(layernorm, planted, inputs(), ("x", "w", "b"))
    lines = capsys.readouterr().out.splitlines()
    verdicts = {line.split()[0]: line for line in lines[1:]}
    assert "WRONG at" in verdicts["dx"] and verdicts["dw"].endswith("ok") and verdicts["db"].endswith("ok")


def test_one_wrong_element_in_a_large_tensor_is_caught(capsys):
    def forward(x):
        return 3 * x

    def backward(dout, x):
        dx = 3 * dout
        dx[7, 7] += 1.0                                # one element of 400, likely outside the sample
        return dx

    with pytest.raises(ExerciseError, match="dx"):
        check_backward(forward, backward, {"x": np.ones((20, 20))}, "x", samples=4)


def test_not_written_yet_falls_back_to_the_solution(capsys):
    def mine(dout, x, w, b):
        raise NotImplementedError

    assert check_backward(layernorm, mine, inputs(), ("x", "w", "b"), solution=layernorm_backward) is layernorm_backward
    assert "not written yet" in capsys.readouterr().out
    with pytest.raises(ExerciseError, match="not written yet"):
        check_backward(layernorm, mine, inputs(), ("x", "w", "b"))


def test_wrong_count_and_shape(capsys):
    with pytest.raises(ExerciseError, match="returned 2"):
        check_backward(layernorm, lambda dout, x, w, b: layernorm_backward(dout, x, w, b)[:2], inputs(), ("x", "w", "b"))
    with pytest.raises(ExerciseError, match="dw"):
        check_backward(layernorm, lambda dout, x, w, b: (layernorm_backward(dout, x, w, b)[0], dout.sum((0, 1)),
                                                         dout.sum(0)), inputs(), ("x", "w", "b"))
    assert "expected (5,)" in capsys.readouterr().out


def test_ints_and_scalars_pass_through():
    def forward(wte, inp):
        return wte[inp]

    def backward(dout, wte, inp):
        dwte = np.zeros_like(wte)
        np.add.at(dwte, inp, dout)
        return dwte

    inp = np.array([[1, 2, 1]])
    check_backward(forward, backward, {"wte": np.ones((4, 3)), "inp": inp}, "wte")
