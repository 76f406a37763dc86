"""Screenshots taken with headless Chromium, decoded to pixels the tests can check.

Debian's ``chromium`` is installed by ``make test``/``make test-unit`` (the Makefile's ``browser``
target). PNGs are decoded with the standard library alone (zlib and the five PNG filters), so
that what a test asserts about a page is what the browser drew.
"""

from __future__ import annotations

import shutil
import struct
import zlib

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
