"""The shuffled loader's per-process seed: process r of a run seeded 42 draws llm.c's mt19937 seeded 42 + r
(dataloader.h), for the shard order and for the sample order in each shard, and reads its own B*T slice
of each window. Expected batches come from a pure-Python mt19937 (test_data.RefMT) and index arithmetic
written here, over three processes, two shards and two epochs."""
import numpy as np
import pytest

from llmnp.data import DataLoader, write_shard
from test_data import RefMT

B, T, P = 2, 3, 3
WINDOW = P * B * T


def fisher_yates(rng, a):
    """llm.c's random_permutation: in place, from whatever order a holds."""
    for i in range(len(a) - 1, 0, -1):
        j = rng.randint32() % (i + 1)
        a[i], a[j] = a[j], a[i]
    return a


def expected_batches(shards, rank, seed, count):
    rng = RefMT(seed + rank)
    order = list(range(len(shards)))                                # identity once, at init
    out = []
    while len(out) < count:
        for s in fisher_yates(rng, order):                          # each epoch permutes the last order
            tokens = shards[s]
            for idx in fisher_yates(rng, list(range((len(tokens) - 1) // WINDOW))):   # from identity
                start = idx * WINDOW + rank * B * T
                buf = np.asarray(tokens[start:start + B * T + 1])
                out.append((buf[:-1].reshape(B, T), buf[1:].reshape(B, T)))
    return out[:count]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("ranks")
    rng = np.random.default_rng(4)
    shards = [rng.integers(0, 1000, size=n).tolist() for n in (5 * WINDOW + 4, 3 * WINDOW + 1, 4 * WINDOW + 2)]
    for i, tokens in enumerate(shards):
        write_shard(str(d / f"s_{i:02d}.bin"), tokens)
    return str(d / "s_*.bin"), shards


@pytest.mark.parametrize("rank", range(P))
@pytest.mark.parametrize("seed", [42, 7])
def test_each_rank_shuffles_with_seed_plus_rank(shards, rank, seed):
    pattern, tokens = shards
    loader = DataLoader(pattern, B, T, rank=rank, world_size=P, shuffle=True, seed=seed, vocab_size=1000)
    count = 2 * (5 + 3 + 4) + 3                                      # two epochs and a bit
    for i, (x, y) in enumerate(expected_batches(tokens, rank, seed, count)):
        gx, gy = loader.next_batch()
        assert np.array_equal(gx, x) and np.array_equal(gy, y), (rank, seed, i)

