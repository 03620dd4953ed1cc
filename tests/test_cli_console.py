"""The command line's console: a line per stage in logs, other packages' noise kept out, one error path."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import warnings

import pytest


def test_a_log_gets_a_line_per_stage_and_per_tenth_of_it(capsys):
    from edgekws.cli.console import progress

    with progress() as on_event:  # stderr is captured, not a terminal
        on_event({"event": "stage", "stage": "teacher", "detail": "cnn4 on all training clips"})
        for e in range(100):
            on_event({"event": "epoch", "epoch": e, "epochs": 100, "train_loss": 1.0 / (e + 1)})
        for d in range(1, 41):
            on_event({"event": "distill", "step": d, "steps": 40, "loss": 0.5})
        on_event({"event": "something-else"})
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "teacher: cnn4 on all training clips"
    train = [ln for ln in lines if ln.startswith("train teacher:")]
    assert 10 <= len(train) <= 12 and train[0].startswith("train teacher: 1/100") and "100/100" in train[-1]
    distil = [ln for ln in lines if ln.startswith("distil:")]
    assert 10 <= len(distil) <= 12 and "40/40" in distil[-1]
    assert len(lines) == 1 + len(train) + len(distil)


def test_other_packages_warnings_and_log_records_stay_off_the_console(capsys):
    from edgekws.cli.console import quiet_third_party, silence_loggers

    exporter = logging.getLogger("torch.onnx._internal.exporter._registration")
    exporter.setLevel(logging.WARNING)  # torch's own level
    with quiet_third_party():
        exporter.setLevel(logging.WARNING)  # as torch does again when it is imported inside the block
        silence_loggers()  # what each progress event does
        exporter.warning("torchvision is not installed. Skipping torchvision::nms")
        warnings.warn_explicit("copyreg says something", FutureWarning, "copyreg.py", 1, module="copyreg")
        with pytest.warns(UserWarning, match="ours"):
            warnings.warn_explicit("ours", UserWarning, "x.py", 1, module="edgekws.server.train")
    err = capsys.readouterr().err
    assert "torchvision" not in err and "copyreg" not in err
    assert exporter.level == logging.WARNING  # torch's level is back


def test_one_error_path_exits_2_with_the_message_on_stderr():
    code = textwrap.dedent("""
        from edgekws.cli.console import fail
        fail("no such bundle [x]")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == "" and "error: no such bundle [x]" in res.stderr
