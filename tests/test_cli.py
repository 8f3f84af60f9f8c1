"""The command line: `fewstep sample` and `fewstep demo`."""

import subprocess
import sys

import pytest

from fewstep.cli import main


@pytest.mark.parametrize("name", ["gmm-vp", "gmm-flow", "gmm-edm"])
def test_sample_prints_error_and_nfe(name, capsys):
    rc = main(
        [
            "sample",
            "--problem",
            name,
            "--solver",
            "ddim",
            "--nfe",
            "10",
            "--num-samples",
            "16",
            "--dim",
            "8",
            "--components",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "nfe       10 model calls (asked 10)" in out
    assert "rmse      mean" in out


def test_errors_exit_2_with_the_argument(capsys):
    assert main(["sample", "--nfe", "0"]) == 2
    assert "nfe" in capsys.readouterr().err


def test_demo_quick_writes_a_report(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fewstep.cli", "demo", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "report.md").exists() and (
        tmp_path / "error_vs_nfe.png"
    ).stat().st_size > 1000
    assert "report:" in result.stdout
