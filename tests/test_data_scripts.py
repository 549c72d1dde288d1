"""Each data/ script on small local input, its output loaded back with llmnp's loaders."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from llmnp.corpus import CORPUS_TEXT, REPO_ROOT, download_file, tokenize_tinyshakespeare

from llmnp.data import DataLoader, read_shard
from llmnp.errors import UserError
from llmnp.hellaswag import read_examples
from llmnp.tokenizer import EOT, encode

SHAKESPEARE = open(CORPUS_TEXT, encoding="utf-8").read()


def one_error_line(r):
    """Failed with one `error:` line last on stderr (progress bars may come before it), no traceback."""
    return r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in r.stderr


def run_script(name, *args, cwd, **env):
    environ = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    environ.update(env)
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "data", name), *args], cwd=cwd,
                          capture_output=True, text=True, env=environ)


def test_tinyshakespeare_local_file(tmp_path):
    text = SHAKESPEARE[:200_000]
    (tmp_path / "input.txt").write_text(text)
    r = run_script("tinyshakespeare.py", "--input", "input.txt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "dev" / "data" / "tinyshakespeare"
    val, train = read_shard(out / "tiny_shakespeare_val.bin"), read_shard(out / "tiny_shakespeare_train.bin")
    assert val.size == 32768 and "32,768 tokens" in r.stdout
    expected_val, expected_train = tokenize_tinyshakespeare(text)
    assert np.array_equal(val, expected_val) and np.array_equal(train, expected_train)
    x, y = DataLoader(str(out / "tiny_shakespeare_val.bin"), 4, 64).next_batch()
    assert x.shape == (4, 64) and x[0, 0] == EOT and np.array_equal(x[0, 1:], y[0, :-1])
    both = DataLoader(str(out / "tiny_shakespeare_*.bin"), 4, 64)                # train, then val (sorted)
    assert both.num_tokens == train.size + val.size
    assert np.array_equal(both.next_batch()[0].ravel(), train[:4 * 64])
    r = run_script("tinyshakespeare.py", "--input", "missing.txt", cwd=tmp_path)
    assert one_error_line(r)


def test_fineweb_local_documents(tmp_path):
    docs = [SHAKESPEARE[i * 3000:(i + 1) * 3000 + i] for i in range(40)]
    (tmp_path / "in").mkdir()
    with open(tmp_path / "in" / "a.jsonl", "w") as f:
        for d in docs[:30]:
            f.write(json.dumps({"text": d, "id": "x"}) + "\n")
    for i, d in enumerate(docs[30:]):
        (tmp_path / "in" / f"b{i}.txt").write_text(d)
    r = run_script("fineweb.py", "-t", "edu", "--input", "in", "-s", "4000", "-p", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "dev" / "data" / "edu_fineweb10B"
    names = sorted(os.listdir(out))
    assert names[0] == "edu_fineweb_train_000001.bin" and names[-1] == "edu_fineweb_val_000000.bin"
    shards = [read_shard(out / n) for n in names[-1:] + names[:-1]]
    assert all(s.size == 4000 for s in shards[:-1]) and 0 < shards[-1].size <= 4000
    expected = np.concatenate([[EOT] + encode(d) for d in docs])
    assert np.array_equal(np.concatenate(shards), expected)                     # in order, EOT before each
    train = DataLoader(str(out / "edu_fineweb_train_*.bin"), 2, 32, world_size=2, rank=1)
    val = DataLoader(str(out / "edu_fineweb_val_*.bin"), 2, 32)
    assert val.num_tokens == 4000 and train.num_tokens == expected.size - 4000
    x, y = train.next_batch()
    assert np.array_equal(x.ravel()[1:], y.ravel()[:-1])


def test_fineweb_offline_and_bad_input(tmp_path):
    r = run_script("fineweb.py", cwd=tmp_path, HF_ENDPOINT="http://127.0.0.1:9")
    assert one_error_line(r) and "--input" in r.stderr
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"body": "no text"}\n')
    r = run_script("fineweb.py", "--input", "bad.jsonl", cwd=tmp_path)
    assert one_error_line(r) and "line 2" in r.stderr


def test_hellaswag_local_jsonl(tmp_path):
    rows = [{"ind": 24, "ctx": "A man is sitting on a roof. he", "label": 3,
             "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                         "is holding a rubik's cube.", "starts pulling up roofing on a roof."]},
            {"ind": 7, "ctx": "Les élèves écrivent", "label": 0, "endings": ["vite.", "lentement", "😀", "—"]}]
    (tmp_path / "hs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = run_script("hellaswag.py", "--input", "hs.jsonl", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    examples = read_examples(tmp_path / "dev" / "data" / "hellaswag" / "hellaswag_val.bin")
    assert [e.label for e in examples] == [3, 0]
    for e, row in zip(examples, rows):
        assert e.context == encode(row["ctx"])
        assert e.endings == [encode(" " + end) for end in row["endings"]]
    (tmp_path / "bad.jsonl").write_text(json.dumps({**rows[0], "endings": ["a", "b", "c"]}) + "\n")
    r = run_script("hellaswag.py", "--input", "bad.jsonl", cwd=tmp_path)
    assert one_error_line(r) and "line 1" in r.stderr and "4 endings" in r.stderr


def test_download_offline_is_one_line(tmp_path):
    with pytest.raises(UserError, match="--input"):
        download_file("http://127.0.0.1:9/input.txt", str(tmp_path / "x" / "input.txt"))
    assert not os.path.exists(tmp_path / "x" / "input.txt")
