"""Finite-difference checks in float64, shared by the layer and model tests.

Along a random direction r, the central difference (f(x + eps r) - f(x - eps r)) / 2 eps must equal
sum(grad * r): two evaluations of f per check instead of two per element. A few single elements are
checked too, so a gradient that is right on average but wrong in one place still fails.
"""
import numpy as np

EPS = 1e-6


def directional(f, x, grad, rng, eps=EPS):
    """(numeric, analytic) derivative of scalar f() along a random direction; x is perturbed in place."""
    r = rng.standard_normal(x.shape)
    x0 = x.copy()
    x[...] = x0 + eps * r
    fp = f()
    x[...] = x0 - eps * r
    fm = f()
    x[...] = x0
    return (fp - fm) / (2 * eps), float(np.sum(grad * r))


def elementwise(f, x, grad, rng, count=3, eps=EPS):
    """[(numeric, analytic)] for a few single elements of x."""
    out = []
    for _ in range(count):
        i = tuple(rng.integers(0, n) for n in x.shape)
        x0 = x[i]
        x[i] = x0 + eps
        fp = f()
        x[i] = x0 - eps
        fm = f()
        x[i] = x0
        out.append(((fp - fm) / (2 * eps), float(grad[i])))
    return out


def assert_grad(f, x, grad, rng, rtol=1e-6, atol=1e-9, name="x"):
    """Directional and single-element finite differences of f() w.r.t. x agree with grad."""
    checks = [directional(f, x, grad, rng)] + elementwise(f, x, grad, rng)
    for numeric, analytic in checks:
        err = abs(numeric - analytic)
        assert err <= atol + rtol * max(abs(numeric), abs(analytic)), \
            f"d/d{name}: numeric {numeric:.12g} vs analytic {analytic:.12g} (abs err {err:.3g})"
