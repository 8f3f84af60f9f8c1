"""`fewstep demo`: the main job, end to end in its quick form, and its report writer."""

import re
import subprocess
import sys
import time

import pytest

from fewstep.demo import DemoConfig
from fewstep.errors import ArgumentError
from fewstep.report import Report

FIGURES = ("samples.png", "solvers.png", "quality_vs_nfe.png")


def test_quick_demo_runs_end_to_end_in_under_a_minute(tmp_path):
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "fewstep.cli", "demo", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert elapsed < 60
    assert f"report: {tmp_path / 'report.html'}" in result.stdout
    for name in FIGURES:
        assert (tmp_path / name).stat().st_size > 5000
    md = (tmp_path / "report.md").read_text()
    for name in FIGURES:
        assert f"]({name})" in md
    for model in ("digits-unet", "digits-dit", "digits-flow"):
        assert f"`{model}`" in md
    assert "FID floor" in md and "RMSE against the teacher" in md
    page = (tmp_path / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(FIGURES)
    assert not re.search(r'src="(?!data:)', page)  # self-contained


def test_demo_config_is_checked():
    with pytest.raises(ArgumentError, match="showcase"):
        DemoConfig(nfes=(4, 8), showcase_nfe=10)
    with pytest.raises(ArgumentError, match="samples"):
        DemoConfig(samples=25)
    with pytest.raises(ArgumentError, match="teacher_samples"):
        DemoConfig(samples=50, teacher_samples=60)


def test_report_renders_markdown_and_escaped_html(tmp_path):
    rep = Report("a <title>")
    rep.heading("part")
    rep.paragraph("uses `code` and **bold** & more")
    rep.table(["solver", "NFE 4"], [["`ddim`", 1.5]])
    md, page = rep.write(tmp_path)
    assert md.read_text().splitlines()[:3] == ["# a <title>", "", "## part"]
    assert "| `ddim` | 1.5 |" in md.read_text()
    html = page.read_text()
    assert "<h1>a &lt;title&gt;</h1>" in html
    assert "<code>code</code> and <strong>bold</strong> &amp; more" in html
    assert "<tr><td><code>ddim</code></td><td>1.5</td></tr>" in html
