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
