"""report.html in a real headless browser: the page renders, with the verdict and the plot.

Debian's ``chromium`` (installed by ``make test``/``make test-unit``, see the Makefile's
``browser`` target) screenshots the page; the PNG is decoded (``png.py``: zlib, the five PNG
filters) and its pixels checked: the red verdict badge of a BATCH_VARIANCE and the plot's
divergence cells are drawn. The page itself must need nothing from the network.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .png import CHROMIUM, count_colour, decode_png
from .test_check import VaryingVllm, run_check, varying  # noqa: F401 - the fixture
from .test_sampling_faults import Rig


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (`apt-get install -y chromium`; make test installs it)",
)
def test_report_html_renders_the_verdict_and_the_plot(varying: Rig, tmp_path: Path) -> None:  # noqa: F811
    assert isinstance(varying.fake, VaryingVllm)
    varying.fake.mode = "batch"
    outcome = run_check(varying)
    assert outcome.verdict == "BATCH_VARIANCE"
    page = outcome.pack.directory / "report.html"
    html = page.read_text(encoding="utf-8")
    assert "<script" not in html
    # nothing fetched: the only URL is the SVG namespace
    assert re.findall(r"(?:src|href)=\"", html) == []
    assert re.findall(r"https?://[^\"' ]+", html) == ["http://www.w3.org/2000/svg"]
    assert 'id="divergence-plot"' in html
    shot = tmp_path / "report.png"
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={shot}", "--window-size=1000,900", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert shot.is_file(), done.stderr
    width, height, rows = decode_png(shot.read_bytes())
    assert (width, height) == (1000, 900)
    assert count_colour(rows, (0xB7, 0x1C, 0x1C)) > 500  # the red BATCH_VARIANCE badge
    assert count_colour(rows, (0x2E, 0x7D, 0x32)) > 500  # green: concurrency 1 cells
    # divergence cells: token 2 of 6 (orange between dark red and yellow)
    from detserve.diagnosis.report_html import divergence_colour

    fill = divergence_colour(2, 6)
    rgb = (int(fill[1:3], 16), int(fill[3:5], 16), int(fill[5:7], 16))
    assert count_colour(rows, rgb) > 4 * 300  # four prompts' cells at concurrency 4
