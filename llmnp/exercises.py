"""The checker of the notebooks' exercises: a backward written by a learner, tested against finite
differences of its forward, with a verdict per gradient saying which one is wrong and where.

    backward = check_backward(forward, backward, inputs, wrt, solution=None)

forward(**inputs) returns the layer's output, an array. backward(dout, **inputs) returns the gradients
of sum(out * dout) with respect to the inputs named in wrt, in that order (one array, or a tuple). The
check runs in float64: for each gradient, every element (or a random sample of a large tensor) is
compared with the central difference (f(x + eps) - f(x - eps)) / 2 eps, and the whole tensor along one
random direction r with sum(gradient * r), so a wrong element the sample missed still shows.
A backward still raising NotImplementedError is "not written yet": with a solution given, the
solution is checked and returned instead, so a notebook runs top to bottom before its exercises are
done. A wrong gradient raises ExerciseError after the table is printed.

Not here: the layers (llmnp/<layer>.py); the notebooks' own printed check (their gradcheck_table).
"""
import numpy as np


class ExerciseError(AssertionError):
    pass


def check_backward(forward, backward, inputs, wrt, solution=None, samples=24, tol=1e-6, seed=0, eps=1e-6):
    """Prints one line per gradient named in wrt; returns the backward that passed (backward itself, or
    solution if backward is not written yet). Raises ExerciseError naming the wrong gradients."""
    wrt = (wrt,) if isinstance(wrt, str) else tuple(wrt)
    inputs = {k: np.array(v, dtype=np.float64) if k in wrt else v for k, v in inputs.items()}
    rng = np.random.default_rng(seed)
    out = np.asarray(forward(**inputs), dtype=np.float64)
    dout = rng.normal(size=out.shape)

    def loss():
        return float(np.sum(np.asarray(forward(**inputs)) * dout))

    name = getattr(backward, "__name__", "backward")
    try:
        grads = backward(dout, **{k: v.copy() if k in wrt else v for k, v in inputs.items()})
    except NotImplementedError:
        if solution is None:
            raise ExerciseError(f"{name} is not written yet") from None
        print(f"{name} is not written yet: checking the solution instead")
        backward, name = solution, getattr(solution, "__name__", "solution")
        grads = backward(dout, **{k: v.copy() if k in wrt else v for k, v in inputs.items()})
    grads = grads if isinstance(grads, tuple) else (grads,)
    if len(grads) != len(wrt):
        raise ExerciseError(f"{name} returned {len(grads)} gradient(s); expected {len(wrt)}, "
                            f"for {', '.join(wrt)} in that order")

    print(f"{'gradient':>9} {'elements':>9} {'worst error':>12}  verdict")
    wrong = []
    for label, grad in zip(wrt, grads):
        x = inputs[label]
        grad = np.asarray(grad, dtype=np.float64) if grad is not None else None
        if grad is None or grad.shape != x.shape:
            shape = None if grad is None else grad.shape
            print(f"{'d' + label:>9} {'':>9} {'':>12}  WRONG: shape {shape}, expected {x.shape}")
            wrong.append("d" + label)
            continue
        picked = range(x.size) if x.size <= samples else rng.choice(x.size, size=samples, replace=False)
        worst, where, num_at, ana_at, bad = 0.0, None, 0.0, 0.0, 0
        for flat in picked:
            idx = np.unravel_index(int(flat), x.shape)
            saved = x[idx]
            x[idx] = saved + eps
            up = loss()
            x[idx] = saved - eps
            down = loss()
            x[idx] = saved
            num, ana = (up - down) / (2 * eps), float(grad[idx])
            err = abs(num - ana) / max(abs(num), abs(ana), 1.0)
            bad += err > tol
            if err >= worst:
                worst, where, num_at, ana_at = err, tuple(int(i) for i in idx), num, ana
        r = rng.normal(size=x.shape)                  # the whole tensor, along one direction
        saved = x.copy()
        x += eps * r
        up = loss()
        x[...] = saved - eps * r
        down = loss()
        x[...] = saved
        num, ana = (up - down) / (2 * eps), float(np.sum(grad * r))
        along = abs(num - ana) / max(abs(num), abs(ana), 1.0)
        count = f"{len(picked)}/{x.size}"
        if bad:
            verdict = f"WRONG at {where}: numeric {num_at:.6g}, yours {ana_at:.6g} ({bad} elements off)"
        elif along > tol:
            verdict = f"WRONG somewhere outside the sampled elements (a random direction is off by {along:.1e})"
        else:
            verdict = "ok"
        print(f"{'d' + label:>9} {count:>9} {max(worst, along):12.1e}  {verdict}")
        if verdict != "ok":
            wrong.append("d" + label)
    if wrong:
        raise ExerciseError(f"{name}: {', '.join(wrong)} wrong (see the table above)")
    return backward
