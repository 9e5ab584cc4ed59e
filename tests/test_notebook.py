"""The numbered notebooks' helpers (medcore.report.notebook): no machine path, console output sent to a log."""
from __future__ import annotations

from medcore.flows.pipeline import project_root
from medcore.report import notebook as nb


def test_where_never_names_an_absolute_path(tmp_path):
    root = project_root()
    assert nb.where(root / "runs" / "ci" / "results") == "runs/ci/results"
    assert nb.where(f"local:{root.parent}/shared/medmcqa/dev.json [validation]") == \
        "local:../shared/medmcqa/dev.json [validation]"
    assert not nb.where(tmp_path / "x").startswith("/")


def test_logged_sends_what_a_step_prints_to_the_log(tmp_path, capsys):
    import sys

    with nb.logged(tmp_path / "logs" / "step.log") as log:
        print("{'loss': 1.2}")  # the Trainer's log line
        print("a progress bar", file=sys.stderr)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    text = log.read_text()
    assert "{'loss': 1.2}" in text and "a progress bar" in text
