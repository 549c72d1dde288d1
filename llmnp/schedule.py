"""Learning-rate schedules, as llm.c's trainer computes them (0-indexed step, N steps in all).

warmup:   step < W  ->  lr * (step + 1) / W
then, with r = (step - W) / (N - W) going 0 -> 1 and min_lr = lr * final_frac:
  cosine:   min_lr + 0.5 (1 + cos(pi r)) (lr - min_lr)
  linear:   lr - r (lr - min_lr)
  constant: lr
  wsd:      lr until 80% of the steps, then min_lr + (1 - sqrt(r')) (lr - min_lr) over the last 20%
"""
import math

SCHEDULES = ("cosine", "linear", "constant", "wsd")


def get_lr(step, num_steps, lr, warmup=0, final_frac=1.0, kind="cosine"):
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}: use one of {', '.join(SCHEDULES)}")
    if step < warmup:
        return lr * (step + 1) / warmup
    min_lr = lr * final_frac
    if kind == "constant":
        return lr
    if kind == "wsd":
        decay_start = int(0.8 * num_steps)
        if step < decay_start:
            return lr
        r = (step - decay_start) / max(1, num_steps - decay_start)
        return min_lr + (1.0 - math.sqrt(min(r, 1.0))) * (lr - min_lr)
    r = min((step - warmup) / max(1, num_steps - warmup), 1.0)
    if kind == "cosine":
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * r)) * (lr - min_lr)
    return lr - r * (lr - min_lr)
