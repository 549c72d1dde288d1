"""The CPU backend's worker threads: every index done exactly once, nested calls, row views."""
import numpy as np
import pytest

from llmnp.parallel import as_rows, blocks, parallel_for


@pytest.mark.parametrize("threads", ["1", "2", "3"])
def test_every_index_once(monkeypatch, threads):
    monkeypatch.setenv("LLMNP_NUM_THREADS", threads)
    for n, grain in ((0, 1), (1, 1), (7, 1), (100, 10), (1001, 7)):
        count = np.zeros(n, np.int64)
        parallel_for(n, lambda lo, hi: np.add.at(count, np.arange(lo, hi), 1), grain=grain)
        np.testing.assert_array_equal(count, 1)
    assert [b for b in blocks(3, 20, 5)] == [(3, 8), (8, 13), (13, 18), (18, 20)]


def test_nested_call_runs_inline(monkeypatch):
    """A part that calls parallel_for itself must not wait on the pool its own thread belongs to."""
    monkeypatch.setenv("LLMNP_NUM_THREADS", "2")
    out = np.zeros(1000)

    def inner(lo, hi):
        out[lo:hi] += 1

    parallel_for(4, lambda lo, hi: parallel_for(out.size, inner, grain=10), grain=1)
    np.testing.assert_array_equal(out, 2.0)          # each of the 2 outer parts added 1 everywhere


def test_rows_are_views():
    a = np.zeros((2, 3, 4))
    as_rows(a)[5] = 1.0
    assert a[1, 2].tolist() == [1.0] * 4
    with pytest.raises(ValueError):
        as_rows(a.transpose(1, 0, 2))                 # its (6, 4) reshape would be a copy
