"""Your own text in, text out: data/text.py's shards (tokens, EOT placement, split, names, summary),
its errors, its piecewise tokenization, and the whole road on a tiny model: text -> shards -> a few
training steps -> a checkpoint folder -> python -m llmnp.generate."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from llmnp.data import read_shard
from llmnp.errors import UserError
from llmnp.tokenizer import EOT, encode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("data_text", os.path.join(ROOT, "data", "text.py"))
text_py = importlib.util.module_from_spec(spec)
spec.loader.exec_module(text_py)

SHAKESPEARE = open(os.path.join(ROOT, "data", "shakespeare.txt"), encoding="utf-8").read()


def run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT)


def test_tokenizing_in_pieces_equals_tokenizing_whole():
    text = SHAKESPEARE[:60000]
    assert len(list(text_py.pieces(text, 2000))) > 20
    np.testing.assert_array_equal(text_py.tokenize_document(text, size=2000), [EOT] + encode(text))
    # whitespace runs, tabs, contractions, digits and non-ASCII next to newlines: where a cut is unsafe
    rng = np.random.default_rng(0)
    atoms = ["a", "word", " ", "  ", "\n", "\n\n", "\t", "'s", "'ll", "42", "é", "🙂", ".", "!?", " \n", "\r\n"]
    text = "".join(rng.choice(atoms, 20000))
    parts = list(text_py.pieces(text, 300))
    assert len(parts) > 50 and "".join(parts) == text
    np.testing.assert_array_equal(text_py.tokenize_document(text, size=300), [EOT] + encode(text))


def test_files_and_folders_become_shards_with_eot_before_each_document(tmp_path, capsys):
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    (tmp_path / "one.txt").write_text("The first document.\nIt has two lines.")
    (tmp_path / "corpus" / "b.txt").write_text("Third, from a folder (sorted: b before sub/).")
    (tmp_path / "corpus" / "sub" / "c.md").write_text("Fourth: héllo wörld 🙂")
    (tmp_path / "corpus" / ".hidden").write_text("never read")
    (tmp_path / "corpus" / "empty.txt").write_text("")
    (tmp_path / "two.txt").write_bytes("\ufeffSecond, with a byte-order mark.".encode("utf-8"))
    out = tmp_path / "out"
    text_py.main([str(tmp_path / "one.txt"), str(tmp_path / "two.txt"), str(tmp_path / "corpus"),
                  "-o", str(out), "--val-fraction", "0.25", "--shard-size", "12"])
    docs = ["The first document.\nIt has two lines.", "Second, with a byte-order mark.",
            "Third, from a folder (sorted: b before sub/).", "Fourth: héllo wörld 🙂"]
    expected = np.concatenate([[EOT] + encode(d) for d in docs])
    n_val = round(len(expected) * 0.25)
    val = sorted(out.glob("text_val_*.bin"))
    train = sorted(out.glob("text_train_*.bin"))
    assert [p.name for p in val] == [f"text_val_{i:06d}.bin" for i in range(len(val))]
    assert all(len(read_shard(p)) == 12 for p in (val + train)[:-1] if p not in (val[-1], train[-1]))
    np.testing.assert_array_equal(np.concatenate([read_shard(p) for p in val]), expected[:n_val])
    np.testing.assert_array_equal(np.concatenate([read_shard(p) for p in train]), expected[n_val:])
    assert len(train) == -(-(len(expected) - n_val) // 12)
    summary = capsys.readouterr().out
    assert f"{len(expected):,} tokens from 4 files (1 empty, skipped)" in summary
    assert "B=4   T=64" in summary and "train_gpt2.py -i" in summary


def test_no_val_split(tmp_path):
    (tmp_path / "a.txt").write_text("just some text " * 10)
    text_py.main([str(tmp_path / "a.txt"), "-o", str(tmp_path / "out"), "--val-fraction", "0"])
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["text_train_000000.bin"]


def test_bad_input_is_one_clear_line(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9\nna\u00efve".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "tiny.txt").write_text("hi")
    cases = [
        ([str(tmp_path / "latin1.txt")], "latin1.txt: not UTF-8 text (byte 0xe9 at offset 3, line 1)"),
        ([str(tmp_path / "empty.txt")], "no text: " + str(tmp_path / "empty.txt") + " is empty"),
        ([str(tmp_path / "missing.txt")], "missing.txt: no such file or folder"),
        ([str(tmp_path / "emptydir")], "emptydir: the folder holds no files"),
        ([str(tmp_path / "tiny.txt")], "too few to split"),
        ([str(tmp_path / "tiny.txt"), "--val-fraction", "1.5"], "--val-fraction: 1.5 is not a number in [0, 1)"),
    ]
    for argv, message in cases:
        with pytest.raises(UserError) as e:
            text_py.main(argv + ["-o", str(tmp_path / "out")])
        assert message in str(e.value)
    assert not (tmp_path / "out").exists()             # nothing half-written
    r = run("data/text.py", str(tmp_path / "latin1.txt"), "-o", str(tmp_path / "out"))
    assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "iconv" in r.stderr


def test_text_to_shards_to_training_to_generation(tmp_path, capsys):
    """The whole road: data/text.py, then train_gpt2.py (a 1-layer model, 20 steps, checkpoints every
    10), then python -m llmnp.generate on the training folder."""
    import train_gpt2
    (tmp_path / "story.txt").write_text(SHAKESPEARE[:20000], encoding="utf-8")
    text_py.main([str(tmp_path / "story.txt"), "-o", str(tmp_path / "shards"), "--val-fraction", "0.1"])
    run_dir = tmp_path / "run"
    train_gpt2.main(["-e", "d1", "-i", str(tmp_path / "shards" / "text_train_*.bin"),
                     "-j", str(tmp_path / "shards" / "text_val_*.bin"), "-b", "4", "-t", "32", "-l", "3e-3",
                     "-x", "20", "-v", "10", "-m", "2", "-s", "1000", "-g", "4", "-o", str(run_dir), "-n", "10"])
    val = [float(line.split()[-1]) for line in capsys.readouterr().out.splitlines() if line.startswith("val loss")]
    assert len(val) == 3 and val[-1] < val[0] - 1.0, val          # it learned something from the text
    assert (run_dir / "DONE_00000020").exists()

    r = run("-m", "llmnp.generate", "--model", str(run_dir), "--prompt", "KING", "-n", "20",
            "--temperature", "0", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("KING") and len(r.stdout) > len("KING\n")
    # the folder means its latest complete checkpoint, step 20
    r20 = run("-m", "llmnp.generate", "--model", str(run_dir / "model_00000020.bin"), "--prompt", "KING",
              "-n", "20", "--temperature", "0")
    assert r20.stdout == r.stdout
