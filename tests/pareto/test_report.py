"""The offline HTML report: its table and figures, and that a real headless browser renders it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fopru.pareto import summarize_sweep
from tests.test_pareto import make_result, write_sweep

CHROMIUM = shutil.which("chromium")


@pytest.fixture
def report(tmp_path: Path) -> Path:
    results = [
        make_result(strategy=strategy, keep=keep, metrics={"accuracy": accuracy}, accuracy_low=accuracy - 0.1,
                    accuracy_high=accuracy + 0.05, tflops_total=0.0004 + keep / 1000, overrides=[f"keep={keep}",
                    f"strategy={strategy}"])
        for strategy, keep, accuracy in (("rank", 0.1, 0.6), ("rank", 0.5, 0.7), ("row", 0.1, 0.65))
    ]  # fmt: skip
    write_sweep(tmp_path / "sweep", results, [0, 1, 2])
    summary = summarize_sweep(tmp_path / "sweep", group="g", log_to_wandb=False)
    assert summary.report == tmp_path / "sweep" / "report.html"
    return summary.report


def test_the_report_holds_the_jobs_with_intervals_and_the_figures(report: Path) -> None:
    page = report.read_text()
    assert "<title>tiny_llava on easyvqa: 16 samples, sweep test</title>" in page
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", page, flags=re.S)
    assert len(rows) == 4  # header + three jobs
    assert "<td>keep=0.1 strategy=rank</td>" in rows[1] and "0.600 [0.500, 0.650]" in rows[1]
    assert "<td>keep=0.1 strategy=row</td>" in rows[3] and "0.650 [0.550, 0.700]" in rows[3]
    assert "<th>MFLOPs/sample</th>" in rows[0]
    assert page.count('src="data:image/png;base64,') == 2  # the TFLOPs and latency plots, inline
    assert "http" not in page  # nothing to fetch: it opens offline


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_headless_chromium_renders_the_report(report: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "shot.png"
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--no-first-run", f"--screenshot={shot}", "--window-size=1200,800", report.resolve().as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 800)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, table borders, the plot: not a blank page
    white = sum(count for count, colour in colours if colour == (255, 255, 255))
    assert white < 0.97 * 1200 * 800
    # The table's shaded front rows are drawn (#eef6ee), so the CSS was applied.
    assert any(colour == (0xEE, 0xF6, 0xEE) for _, colour in colours)
