"""report.html in a real headless browser: the page renders, with the verdict and the plot.

Debian's ``chromium`` (installed by ``make test``/``make test-unit``, see the Makefile's
``browser`` target) screenshots the page; the PNG is decoded here (zlib, the five PNG filters)
and its pixels checked: the red verdict badge of a BATCH_VARIANCE and the plot's divergence
cells are drawn. The page itself must need nothing from the network.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from .test_check import VaryingVllm, run_check, varying  # noqa: F401 - the fixture
from .test_sampling_faults import Rig

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def decode_png(data: bytes) -> tuple[int, int, list[bytearray]]:
    """Width, height and RGBA rows of an 8-bit, non-interlaced RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, idat = 8, b""
    width = height = 0
    channels = 4
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert (depth, interlace) == (8, 0)
            assert colour in (2, 6)
            channels = 4 if colour == 6 else 3
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytearray] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for x in range(stride):
            left = line[x - channels] if x >= channels else 0
            up = previous[x]
            corner = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[x] = (line[x] + pred) & 0xFF
        rows.append(line)
        previous = line
    if channels == 3:
        rows = [
            bytearray(b for i in range(0, len(r), 3) for b in (*r[i : i + 3], 255)) for r in rows
        ]
    return width, height, rows


def count_colour(rows: list[bytearray], rgb: tuple[int, int, int], tolerance: int = 6) -> int:
    count = 0
    for row in rows:
        for i in range(0, len(row), 4):
            if all(abs(row[i + k] - rgb[k]) <= tolerance for k in range(3)):
                count += 1
    return count


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
