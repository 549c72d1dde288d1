"""AdamW against the update written out by hand, the model's weight-decay groups, and the global norm."""
import numpy as np

from llmnp import GPT2, GPT2Config
from llmnp.adamw import CHUNK, adamw_update, global_norm_squared
from llmnp.params import DECAYED_PARAMETERS, PARAMETER_NAMES


def test_two_steps_match_hand_computation():
    rng = np.random.default_rng(0)
    n = CHUNK + 123                                   # crosses a chunk boundary (and two threads)
    p0, g1, g2 = rng.standard_normal(n), rng.standard_normal(n), rng.standard_normal(n)
    lr, b1, b2, eps, wd, scale = 1e-2, 0.9, 0.95, 1e-8, 0.1, 0.5
    p, m, v = p0.copy(), np.zeros(n), np.zeros(n)
    adamw_update(p, g1.copy(), m, v, lr, b1, b2, eps, wd, 1, scale)
    adamw_update(p, g2.copy(), m, v, lr, b1, b2, eps, wd, 2, scale)
    # by hand, for the first element only, scalar arithmetic in Python floats
    for i in (0, n - 1):
        pe, me, ve = p0[i], 0.0, 0.0
        for t, g in ((1, g1[i] * scale), (2, g2[i] * scale)):
            me = b1 * me + (1 - b1) * g
            ve = b2 * ve + (1 - b2) * g * g
            mhat, vhat = me / (1 - b1 ** t), ve / (1 - b2 ** t)
            pe = pe - lr * (mhat / (vhat ** 0.5 + eps) + wd * pe)
        assert abs(p[i] - pe) < 1e-14 and abs(m[i] - me) < 1e-15 and abs(v[i] - ve) < 1e-15


def test_first_step_moves_each_weight_by_lr():
    # with bias correction, step 1 is lr * g / (|g| + eps): every weight moves by ~lr
    p, g = np.zeros(1000, np.float32), np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    adamw_update(p, g, np.zeros_like(p), np.zeros_like(p), 1e-3, 0.9, 0.999, 1e-8, 0.0, 1)
    np.testing.assert_allclose(p, -1e-3 * np.sign(g), rtol=1e-4)


def test_model_decays_only_the_matrices():
    config = GPT2Config.tiny()
    model = GPT2(config, dtype=np.float64)
    model.params_memory[...] = 1.0
    model.zero_grad()                                 # zero gradients: only weight decay moves weights
    model.update(lr=0.1, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.5, t=1)
    for name in PARAMETER_NAMES:
        expected = 1.0 - 0.1 * 0.5 if name in DECAYED_PARAMETERS else 1.0
        np.testing.assert_allclose(model.params[name], expected, rtol=1e-15)


def test_global_norm():
    g = np.random.default_rng(2).standard_normal(3 * CHUNK + 5).astype(np.float32)
    assert abs(global_norm_squared(g) - float(np.sum(g.astype(np.float64) ** 2))) < 1e-6 * g.size


def test_update_is_the_same_in_one_piece_and_over_threads(monkeypatch):
    """The update is elementwise: cutting the buffers into parts per thread and blocks per part must not
    change a single bit."""
    import llmnp.adamw
    rng = np.random.default_rng(3)
    n = 3 * CHUNK + 77
    p0, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    results = []
    for threads, chunk in (("1", n), ("2", CHUNK), ("3", 1000)):
        monkeypatch.setenv("LLMNP_NUM_THREADS", threads)
        monkeypatch.setattr(llmnp.adamw, "CHUNK", chunk)
        p, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
        for t in (1, 2):
            adamw_update(p, g, m, v, 1e-2, 0.9, 0.95, 1e-8, 0.1, t, 0.5)
        results.append((p, m, v))
    for p, m, v in results[1:]:
        np.testing.assert_array_equal(p, results[0][0])
        np.testing.assert_array_equal(m, results[0][1])
        np.testing.assert_array_equal(v, results[0][2])
