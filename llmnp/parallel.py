"""Worker threads for the CPU backend: the optimizer and the elementwise layers split their arrays into
disjoint parts and run one part per core. NumPy releases the GIL inside its loops, so plain Python
threads calling NumPy on separate slices run in parallel.

Each part is walked in blocks of a few ten thousand elements (`blocks`), so a chain of in-place
operations on one block stays in the core's L2 cache and any temporary is block-sized, never the size
of the whole array.

Threads: LLMNP_NUM_THREADS, or the cores this process may run on.
Not here: the products (OpenBLAS threads those itself), anything on the GPU.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BLOCK = 1 << 15        # elements per block: a few arrays of this size fit in L2 together


def num_threads():
    return int(os.environ.get("LLMNP_NUM_THREADS", 0)) or len(os.sched_getaffinity(0))


_pool, _pool_pid = None, None


def _executor():
    """The process's thread pool, made at first use (and again in a forked child, whose threads are gone)."""
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        _pool, _pool_pid = ThreadPoolExecutor(max(1, num_threads() - 1), thread_name_prefix="llmnp"), os.getpid()
    return _pool


def parallel_for(n, fn, grain=BLOCK):
    """fn(lo, hi) on contiguous parts of range(n), one part per thread (this thread takes the first),
    each part at least `grain` long: a small n is one call, on this thread, and so is a call from
    inside a part (the pool's threads are busy with the outer parts)."""
    parts = max(1, min(num_threads(), n // grain))
    if threading.current_thread().name.startswith("llmnp"):
        parts = 1
    if parts == 1:
        fn(0, n)
        return
    bounds = [n * i // parts for i in range(parts + 1)]
    err = np.geterr()                        # NumPy's error handling is per thread: the caller's applies

    def part(lo, hi):
        with np.errstate(**err):
            fn(lo, hi)
    futures = [_executor().submit(part, bounds[i], bounds[i + 1]) for i in range(1, parts)]
    try:
        fn(bounds[0], bounds[1])
    finally:
        for f in futures:
            f.result()


def blocks(lo, hi, size=BLOCK):
    """(start, end) of consecutive blocks of at most `size` covering range(lo, hi)."""
    for start in range(lo, hi, size):
        yield start, min(start + size, hi)


def as_rows(a):
    """A (..., K) array as (N, K): a view, so writes land in `a` (the layers' buffers are contiguous)."""
    rows = a.reshape(-1, a.shape[-1])
    if not np.may_share_memory(rows, a):
        raise ValueError("expected a contiguous array: its (N, K) reshape would be a copy")
    return rows
