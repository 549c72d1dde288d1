"""Bad flags and bad output places for the command-line programs: each is refused before any work with
exit status 1 and one line that names the flag or path and the cause, never a traceback.

One test per class: train_gpt2's number flags (NaN, negative, zero where that means nothing, out of
range), its -o folder (a file, under a file, not writable, a folder holding another run), the models it
cannot hold, and the output of the writers (plot, data/text.py, llmnp.check --write, a model file).
The readers' bad files are in test_bad_input_readers.py, signals and full disks in test_faults.py.
"""
import os
import sys

import numpy as np
import pytest

import train_gpt2
from llmnp.errors import UserError, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fails(main, argv, capsys):
    """(exit status, stderr) of main(argv) run as its command line runs it."""
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv)
    return e.value.code, capsys.readouterr().err


def assert_one_line(err, *words):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


# ------------------------------------------------------------------------------ number flags
@pytest.mark.parametrize("flag, value, words", [
    ("-l", "nan", "not a finite number >= 0"),
    ("-l", "-1", "not a finite number >= 0"),
    ("-l", "inf", "not a finite number >= 0"),
    ("-l", "fast", "not a number"),
    ("-c", "nan", "not a finite number >= 0"),
    ("-q", "nan", "not a number in [0, 1]"),
    ("-q", "1.5", "not a number in [0, 1]"),
    ("-x", "0", "not a positive integer or -1"),     # 0 steps: one line, not a silent whole epoch
    ("-m", "0", "not a positive integer or -1"),     # 0 val batches: was "val loss 0.000000"
    ("-d", "0", "not a positive integer or -1"),
    ("-b", "0", "not a positive integer"),
    ("-t", "-4", "not a positive integer"),
    ("-v", "-1", "not an integer >= 0"),
    ("-s", "-1", "not an integer >= 0"),
    ("-n", "-2", "not an integer >= 0"),
    ("-nk", "-1", "not an integer >= 0"),
    ("-u", "-5", "not an integer >= 0"),
    ("-g", "-1", "not an integer >= 0"),
    ("--seed", "-1", "not an integer in [0, 2^32)"),
    ("--seed", "4294967296", "not an integer in [0, 2^32)"),
    ("-y", "2", "invalid choice"),
])
def test_number_flags(tiny_run, capsys, flag, value, words):
    status, err = fails(train_gpt2.main, tiny_run + [flag, value], capsys)
    assert status == 1
    assert_one_line(err, flag, words)


@pytest.mark.parametrize("flags, words", [
    (["-y", "1"], "-y 1 needs -o"),
    (["--dtype", "bf16"], "--dtype bf16 needs --device cuda"),
    (["-b", "3", "-d", "100"], "not a multiple of B*T*processes"),
    (["-t", "64"], "exceeds the model's max_seq_len 32"),
])
def test_flag_combinations(tiny_run, capsys, flags, words):
    status, err = fails(train_gpt2.main, tiny_run + flags, capsys)
    assert status == 1
    assert_one_line(err, words)


def test_zero_cadences_mean_never(tiny_run, capsys):
    """-s 0 never samples (llm.c's meaning), -v 0 never evaluates; both train normally."""
    assert train_gpt2.main(tiny_run + ["-x", "3", "-s", "0", "-v", "0"]) == 0
    out = capsys.readouterr().out
    assert "generating" not in out and "val loss" not in out and "step    3/3" in out


def test_a_model_larger_than_memory_is_refused_before_allocation(tiny_run, capsys):
    status, err = fails(train_gpt2.main, tiny_run[2:] + ["-e", "d2000"], capsys)
    assert status == 1
    assert_one_line(err, "393,225,898,240,000 parameters", "TiB", "free", "smaller model")


def test_a_batch_larger_than_memory_is_refused_before_training(tiny_run, capsys, monkeypatch):
    import llmnp.memory
    real = llmnp.memory.available_bytes
    model_only = []

    def tight(device):                     # room for the model, not for its training buffers
        model_only.append(1)
        return real(device) if len(model_only) == 1 else 10_000
    monkeypatch.setattr(llmnp.memory, "available_bytes", tight)
    status, err = fails(train_gpt2.main, tiny_run + ["-x", "1"], capsys)
    assert status == 1
    assert_one_line(err, "this run needs", "more at its peak", "not even -b 1 fits")


# ---------------------------------------------------------------------------- the -o folder
def test_output_folder_that_cannot_be(tiny_run, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [(str(a_file), "is a file, not a folder"),
             (str(a_file / "run"), "a part of the path is a file")]
    if os.geteuid() != 0:                  # root writes anywhere: the permission case needs a user
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases.append((str(locked / "run"), "permission denied"))
    for out, words in cases:
        status, err = fails(train_gpt2.main, tiny_run + ["-x", "1", "-o", out], capsys)
        assert status == 1
        assert_one_line(err, out, words)


def test_output_folder_of_another_run_is_not_mixed(tiny_run, tmp_path, capsys):
    """A reused -o without -y 1 would write a new main.log beside the old run's checkpoints, which
    export, generate and -y 1 then take: refused, with the ways out; -y 1 continues it."""
    out = str(tmp_path / "run")
    assert train_gpt2.main(tiny_run + ["-x", "2", "-o", out, "-s", "0"]) == 0
    capsys.readouterr()
    status, err = fails(train_gpt2.main, tiny_run + ["-x", "4", "-o", out], capsys)
    assert status == 1
    assert_one_line(err, out, "already holds a run", "-y 1", "new -o")
    assert train_gpt2.main(tiny_run + ["-x", "4", "-o", out, "-y", "1", "-s", "0"]) == 0
    out_text = capsys.readouterr().out
    assert "resumed from" in out_text and "initialising" not in out_text
    log = open(os.path.join(out, "main.log")).read()
    assert log.count("s:2 tel:") == 1            # the resumed step's val loss is not logged twice


def test_resume_with_another_model_names_both(tiny_run, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train_gpt2.main(tiny_run + ["-x", "2", "-o", out, "-s", "0"]) == 0
    capsys.readouterr()
    flags = tiny_run[2:] + ["-e", "d1", "-x", "4", "-o", out, "-y", "1"]
    status, err = fails(train_gpt2.main, flags, capsys)
    assert status == 1
    assert_one_line(err, "L=2 NH=2 C=16", "-e d1 is a L=1 NH=1 C=64")


# -------------------------------------------------------------------------------- writers
def test_writers_name_the_path_and_the_cause(tmp_path, capsys):
    """Every writer goes through fileio.write_atomic; its callers' command lines give one line."""
    from llmnp import GPT2, GPT2Config, plot
    from llmnp.fileio import write_atomic
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="x.bin: .*a_file is a file, not a folder"):
        write_atomic(str(a_file / "x.bin"), b"123")
    with pytest.raises(UserError, match="cannot create the folder .*a_file/sub: a part of the path is a file"):
        write_atomic(str(a_file / "sub" / "x.bin"), b"123")
    with pytest.raises(UserError, match="it is a folder"):
        write_atomic(str(tmp_path), b"123")
    # a model file
    model = GPT2(GPT2Config.tiny(), seed=0)
    with pytest.raises(UserError, match="model.bin: .*a_file is a file, not a folder"):
        model.save_checkpoint(str(a_file / "model.bin"))
    # plot output
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "main.log").write_text("s:0 tel:5.0\ns:0 trl:5.0 lr:0.1 norm:1.0\n")
    status, err = fails(plot.main, [str(run_dir), "-o", str(a_file / "plot.png")], capsys)
    assert status == 1
    assert_one_line(err, str(a_file / "plot.png"), "is a file, not a folder")
    # data/text.py -o
    sys.path.insert(0, os.path.join(ROOT, "data"))
    try:
        import text as text_py
    finally:
        sys.path.pop(0)
    (tmp_path / "story.txt").write_text("hello there\n" * 200)
    status, err = fails(text_py.main, [str(tmp_path / "story.txt"), "-o", str(a_file / "shards")], capsys)
    assert status == 1
    assert_one_line(err, str(a_file), "is a file, not a folder")
    # llmnp.check --write
    from llmnp import check
    model.save_checkpoint(str(tmp_path / "tiny.bin"))
    status, err = fails(check.main, [str(tmp_path / "tiny.bin"), str(a_file / "state.bin"), "--write",
                                     "-b", "1", "-t", "4"], capsys)
    assert status == 1
    assert_one_line(err, str(a_file / "state.bin"), "is a file, not a folder")
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_a_nonfinite_model_is_never_written(tmp_path):
    from llmnp import GPT2, GPT2Config
    model = GPT2(GPT2Config.tiny(), seed=0)
    model.params["wpe"][3, 2] = np.nan
    path = tmp_path / "model.bin"
    with pytest.raises(UserError, match="non-finite"):
        model.save_checkpoint(str(path))
    assert not path.exists() and not os.listdir(tmp_path)


def test_text_shards_of_an_earlier_run_are_replaced(tmp_path, capsys):
    """data/text.py into a folder holding more shards of the same prefix (a longer text, earlier):
    the old ones go, saying so, so a training glob reads only the new text."""
    sys.path.insert(0, os.path.join(ROOT, "data"))
    try:
        import text as text_py
    finally:
        sys.path.pop(0)
    out = tmp_path / "shards"
    (tmp_path / "long.txt").write_text("It was a dark and stormy night.\n" * 300)
    (tmp_path / "short.txt").write_text("Call me Ishmael.\n" * 40)
    text_py.main([str(tmp_path / "long.txt"), "-o", str(out), "--shard-size", "500"])
    before = sorted(os.listdir(out))
    capsys.readouterr()
    text_py.main([str(tmp_path / "short.txt"), "-o", str(out), "--shard-size", "500"])
    assert f"replaced {len(before)} earlier text_* shards in {out}" in capsys.readouterr().out
    after = sorted(os.listdir(out))
    assert len(after) < len(before) and after == ["text_train_000000.bin", "text_val_000000.bin"]


# ------------------------------------------------------- found before step 1, not after hours of it
def test_a_bad_token_in_a_later_shard_stops_the_run_before_step_1(tiny_run, tmp_path, capsys):
    from llmnp.data import write_shard
    tokens = np.arange(2000) % 64
    write_shard(str(tmp_path / "train_000.bin"), tokens)
    write_shard(str(tmp_path / "train_001.bin"), np.where(tokens == 7, 50000, tokens))   # GPT-2 ids
    flags = tiny_run + ["-i", str(tmp_path / "train_*.bin"), "-x", "5"]
    status, err = fails(train_gpt2.main, flags, capsys)
    assert status == 1
    assert_one_line(err, "train_001.bin holds token id 50000", "vocabulary size 64")
    assert "step " not in capsys.readouterr().out


def test_hellaswag_problems_stop_the_run_before_step_1(tiny_run, tmp_path, capsys, monkeypatch):
    from llmnp.hellaswag import write_eval_file
    monkeypatch.chdir(tmp_path)                      # -h 1 reads dev/data/hellaswag/hellaswag_val.bin
    example = {"label": 1, "ctx_tokens": [1, 2, 3], "ending_tokens": [[4], [5, 6], [7], [8]]}
    write_eval_file("dev/data/hellaswag/hellaswag_val.bin", [example])
    status, err = fails(train_gpt2.main, tiny_run + ["-h", "1", "-x", "5"], capsys)   # -b 2
    assert status == 1
    assert_one_line(err, "-h 1 needs -b 4 or more")
    write_eval_file("dev/data/hellaswag/hellaswag_val.bin", [dict(example, ctx_tokens=[1, 2, 300])])
    status, err = fails(train_gpt2.main, tiny_run + ["-h", "1", "-b", "4", "-x", "5"], capsys)
    assert status == 1
    assert_one_line(err, "hellaswag_val.bin: holds token id 300", "vocabulary of 64")


def test_a_model_with_its_own_small_vocabulary_samples_and_saves(tiny_run, tmp_path, capsys):
    """Sampling starts from EOT (50256) only where the vocabulary has it; the end-of-run checkpoint
    comes before the end-of-run sample."""
    out = str(tmp_path / "run")
    assert train_gpt2.main(tiny_run + ["-x", "2", "-s", "1", "-g", "4", "-o", out]) == 0
    text = capsys.readouterr().out
    assert text.count("generating:") == 2
    assert text.index("wrote checkpoint") < text.rindex("generating:")
