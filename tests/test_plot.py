import os

import pytest

from llmnp.errors import UserError
from llmnp.plot import main, read_log


def test_read_log_and_plot(tmp_path):
    log = tmp_path / "main.log"
    log.write_text("s:0 tel:10.5000\ns:0 trl:10.9000 lr:0.000100 norm:3.00\ns:1 trl:9.0000 lr:0.000100 norm:2.00\n"
                   "s:1 trl:8.5000 lr:0.000100 norm:2.00\ns:2 eval:0.2600\nnot a log line\n")
    s = read_log(str(log))
    assert s == {"trl": {0: 10.9, 1: 8.5}, "tel": {0: 10.5}, "eval": {2: 0.26}}   # later line wins
    main([str(tmp_path)])
    assert os.path.getsize(tmp_path / "plot.png") > 1000


def test_missing_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="main.log"):
        main([str(tmp_path / "nope")])


def test_expect_draws_the_band_and_marks_a_run_that_leaves_it(tmp_path, capsys):
    from llmnp.plot import EXPECTED, outside
    exp = EXPECTED["shakespeare_cpu"]
    (tel, step, low, mean, high), = [p for p in exp.points if p[1] == 10]
    healthy, diverged = tmp_path / "healthy", tmp_path / "diverged"
    for d, value in ((healthy, mean), (diverged, high + 1.0)):
        d.mkdir()
        (d / "main.log").write_text(f"s:0 tel:11.0000\ns:10 tel:{value:.4f}\n")
    assert outside(exp, read_log(str(healthy / "main.log"))) == []
    assert [(s, v) for _, s, v, _, _ in outside(exp, read_log(str(diverged / "main.log")))] == [(10, round(high + 1.0, 4))]
    main(["--expect", "shakespeare_cpu", str(healthy), str(diverged), "-o", str(tmp_path / "band.png")])
    out = capsys.readouterr().out
    assert f"{healthy}: inside the expected band" in out
    assert f"{diverged}: LEAVES the expected band at step 10" in out
    assert os.path.getsize(tmp_path / "band.png") > 1000


def test_expect_alone_and_unknown_names(tmp_path):
    main(["--expect", "fineweb_d12", "-o", str(tmp_path / "fineweb.png")])        # the band, no run
    assert os.path.getsize(tmp_path / "fineweb.png") > 1000
    with pytest.raises(UserError, match="shakespeare_cpu"):
        main(["--expect", "nope", "-o", str(tmp_path / "x.png")])
    with pytest.raises(UserError, match="--expect"):
        main([])


def test_fineweb_points_are_llmc_published_ones():
    from llmnp.plot import EXPECTED
    points = {(name, step): mean for name, step, _, mean, _ in EXPECTED["fineweb_d12"].points}
    assert points == {("tel", 18865): 3.28, ("eval", 18865): 0.299}
