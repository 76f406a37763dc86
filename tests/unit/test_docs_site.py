"""The documentation site: built strictly and offline, the README its landing page, in Chromium.

``mkdocs build --strict`` runs on ``mkdocs.yml`` and ``docs/`` into a temporary folder: any
warning fails it, and the configuration makes a broken link, a missing anchor and a page left
out of the navigation warnings (checked below on copies broken on purpose). Nothing is fetched
while building or opening the pages: no web fonts, no plugin but the built-in search, and no
script, style sheet or font loaded from another host.

The README is the landing page (``docs/index.md``) with its links pointed into ``docs/``
(``scripts/readme_from_landing.py``), under 200 lines.

The built landing page and one guide are opened from the files in Debian's headless Chromium
(installed by ``make test``, the Makefile's ``browser`` target): the DOM the browser built must
hold the title, the navigation with a guide per user and the set-up commands, and the
screenshot must show the page drawn (the header's colour, text on a white page), not a blank.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from .committed import REPO_ROOT
from .png import CHROMIUM, decode_png

CONFIG = REPO_ROOT / "mkdocs.yml"
DOCS = REPO_ROOT / "docs"
README = REPO_ROOT / "README.md"
#: what the navigation offers each kind of user, by page
GUIDES = {
    "Serve your own model": "serve-your-model.md",
    "Verify a claim you received": "verify-a-claim.md",
    "Run smoke tests in CI": "ci.md",
    "Run the gateway": "gateway.md",
}
#: Material's header with the palette's primary colour, indigo (#4051b5), as Chromium draws it
HEADER_RGB = (0x40, 0x51, 0xB5)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (`apt-get install -y chromium`; make test installs it)",
)


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    # Material prints a notice about its end of life on every build unless told not to.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
         "--site-dir", str(site)],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once for this module from the committed mkdocs.yml and docs/."""
    folder = tmp_path_factory.mktemp("site")
    built = mkdocs_build(CONFIG, folder)
    assert built.returncode == 0, built.stderr
    assert "WARNING" not in built.stderr, built.stderr
    return folder


def load_config() -> dict[str, Any]:
    document = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def test_the_site_builds_strictly(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert (site / "reference" / "cli.html").is_file()
    # files the pages link to are published with them
    assert (site / "profile.schema.json").is_file()
    assert (site / "ci" / "github-workflow.yml").is_file()


def test_broken_links_anchors_and_pages_are_warnings_which_strict_mode_refuses() -> None:
    config = load_config()
    assert config["strict"] is True
    assert config["validation"] == {
        "omitted_files": "warn",
        "absolute_links": "warn",
        "unrecognized_links": "warn",
        "anchors": "warn",
    }


def _broken_copy(root: Path, edit: str) -> Path:
    shutil.copytree(DOCS, root / "docs")
    shutil.copyfile(CONFIG, root / "mkdocs.yml")
    page = root / "docs" / "gateway.md"
    if edit == "anchor":
        page.write_text(page.read_text() + "\n[x](verify-a-claim.md#no-such-heading)\n")
    elif edit == "page":
        page.write_text(page.read_text() + "\n[x](no-such-page.md)\n")
    elif edit == "own-anchor":
        page.write_text(page.read_text() + "\n[x](#no-such-heading)\n")
    elif edit == "outside":
        page.write_text(page.read_text() + "\n[x](../src/detserve/api.py)\n")
    elif edit == "not-in-nav":
        (root / "docs" / "orphan.md").write_text("# Orphan\n")
    elif edit == "nav-to-nothing":
        text = (root / "mkdocs.yml").read_text()
        (root / "mkdocs.yml").write_text(text.replace("gateway.md", "gateway-gone.md"))
    elif edit == "snippet":
        schema = root / "docs" / "reference" / "profile-schema.md"
        text = schema.read_text()
        schema.write_text(text.replace('--8<-- "profile.schema.json"', '--8<-- "gone.json"'))
    return root / "mkdocs.yml"


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        ("anchor", "no-such-heading"),
        ("own-anchor", "no-such-heading"),
        ("page", "no-such-page.md"),
        ("outside", "api.py"),
        ("not-in-nav", "orphan.md"),
        ("nav-to-nothing", "gateway-gone.md"),
        ("snippet", "gone.json"),
    ],
)
def test_the_strict_build_fails_on_a_broken_site(edit: str, said: str, tmp_path: Path) -> None:
    """The checks above can fail: a copy of the site broken in one place does not build."""
    built = mkdocs_build(_broken_copy(tmp_path / "copy", edit), tmp_path / "site")
    assert built.returncode != 0, built.stderr
    assert said in built.stderr


def test_the_build_fetches_nothing(site: Path) -> None:
    config = load_config()
    assert config["theme"]["font"] is False  # no Google Fonts
    assert config["plugins"] == ["search"]  # no social cards, no privacy plugin downloading
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        # scripts, style sheets, images and fonts come from the site itself
        for tag, attribute in (("script", "src"), ("link", "href"), ("img", "src")):
            for element in re.findall(rf"<{tag}\b[^>]*>", html):
                found = re.search(rf'\b{attribute}="([^"]*)"', element)
                if found and not (tag == "link" and 'rel="canonical"' in element):
                    assert not re.match(r"(https?:)?//", found.group(1)), (page, element)
    for sheet in site.rglob("*.css"):
        assert "fonts.googleapis" not in sheet.read_text(encoding="utf-8"), sheet


def test_the_navigation_has_a_guide_per_user_and_the_references() -> None:
    nav = load_config()["nav"]
    sections = {next(iter(entry)): next(iter(entry.values())) for entry in nav}
    guides = {next(iter(entry)): next(iter(entry.values())) for entry in sections["Guides"]}
    assert guides.items() >= GUIDES.items()
    reference = {next(iter(e.values())) for e in sections["Reference"]}
    assert {"reference/cli.md", "python-api.md", "reference/profile-schema.md"} <= reference
    assert "seed-workflow.md" in guides.values()


def _readme_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "readme_from_landing", REPO_ROOT / "scripts" / "readme_from_landing.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_is_the_landing_page_with_links_into_docs() -> None:
    generator = _readme_generator()
    landing = (DOCS / "index.md").read_text(encoding="utf-8")
    expected = generator.readme(landing)
    assert README.read_text(encoding="utf-8") == expected, (
        "README.md is generated: edit docs/index.md and run `make schemas`"
    )
    assert len(expected.splitlines()) < 200
    # every link of the README leads to a file of the repository
    for target in re.findall(r"\]\((?!https?:)([^)#\s]+)(?:#[^)]*)?\)", expected):
        assert (REPO_ROOT / target).is_file(), target


def test_the_readme_generator_points_links_into_docs() -> None:
    readme = _readme_generator().readme
    text = readme(
        "[a](setup.md) [b](reference/cli.md#detserve-verify) [c](#set-up) [d](https://x.y/z)"
    )
    assert text.endswith(
        "[a](docs/setup.md) [b](docs/reference/cli.md#detserve-verify) [c](#set-up) "
        "[d](https://x.y/z)"
    )


# --- the built pages in a browser ---------------------------------------------------------------


class _Page(HTMLParser):
    """The text of a few parts of a DOM: the title, the h1 headings, the code blocks, and the
    links of the primary navigation (the active one apart)."""

    _VOID = frozenset(
        {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
         "track", "wbr"}
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.parts: dict[str, list[str]] = {
            name: [] for name in ("title", "h1", "pre", "nav", "active")
        }
        self._open: list[tuple[str, list[str]]] = []  # (tag, the parts its text goes to)
        self._in_nav = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._VOID:
            return
        classes = (dict(attrs).get("class") or "").split()
        names = [tag] if tag in ("title", "h1", "pre") else []
        if "headerlink" in classes:  # a heading's permalink sign
            names.append("hidden")
        elif tag == "nav" and "md-nav--primary" in classes:
            self._in_nav += 1
            names.append("in-nav")
        elif tag == "a" and self._in_nav and "md-nav__link" in classes:
            names.append("active" if "md-nav__link--active" in classes else "nav")
        for name in names:
            if name in self.parts:
                self.parts[name].append("")
        self._open.append((tag, names))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, names = self._open.pop()
            if "in-nav" in names:
                self._in_nav -= 1
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if any("hidden" in names for _, names in self._open):
            return
        for _, names in self._open:
            for name in names:
                if name in self.parts:
                    self.parts[name][-1] += data

    def text(self, name: str) -> list[str]:
        """Each element's text, spaces collapsed (a code block's lines kept)."""
        if name == "pre":
            return [block.strip("\n") for block in self.parts[name]]
        return [" ".join(text.split()) for text in self.parts[name]]


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _dom(page: Path) -> _Page:
    shown = _chromium("--dump-dom", page.as_uri())
    assert "</html>" in shown.stdout, shown.stderr
    page = _Page()
    page.feed(shown.stdout)
    return page


def _screenshot(page: Path, shot: Path) -> tuple[int, int, list[bytearray]]:
    done = _chromium(f"--screenshot={shot}", "--window-size=1280,1000", page.as_uri())
    assert shot.is_file(), done.stderr
    return decode_png(shot.read_bytes())


def _assert_drawn(rows: list[bytearray], width: int) -> None:
    """The screenshot is a page drawn: Material's indigo header across the top, a white page,
    and dark text on it, not one colour."""
    colours: Counter[tuple[int, int, int]] = Counter()
    for row in rows:
        for i in range(0, len(row), 4):
            colours[(row[i], row[i + 1], row[i + 2])] += 1
    total = sum(colours.values())
    assert len(colours) > 50, colours.most_common(5)  # text is anti-aliased: many shades
    assert colours[(255, 255, 255)] > total // 2
    header = rows[10]
    header_pixels = sum(
        1 for i in range(0, len(header), 4) if tuple(header[i : i + 3]) == HEADER_RGB
    )
    assert header_pixels > width * 0.8, "no indigo header band at the top"
    dark = sum(n for rgb, n in colours.items() if max(rgb) < 80)
    assert dark > 5_000, "no text drawn"


@needs_chromium
def test_the_landing_page_renders_in_chromium(site: Path, tmp_path: Path) -> None:
    page = _dom(site / "index.html")
    assert page.text("title") == ["detserve"]
    assert page.text("h1") == ["detserve"]
    for guide in GUIDES:
        assert guide in page.text("nav"), page.text("nav")
    assert "Command line" in page.text("nav")
    assert page.text("active") == ["Home"]
    # the two set-up commands, drawn as a code block
    setup = next(block for block in page.text("pre") if "make demo" in block)
    assert re.search(r"^make demo\s+#", setup, re.M), setup
    assert re.search(r"^make test\s+#", setup, re.M), setup
    width, height, rows = _screenshot(site / "index.html", tmp_path / "landing.png")
    assert (width, height) == (1280, 1000)
    _assert_drawn(rows, width)


@needs_chromium
def test_a_guide_renders_in_chromium(site: Path, tmp_path: Path) -> None:
    page = _dom(site / "verify-a-claim.html")
    [title] = page.text("title")
    assert title.startswith("Verify a claim you received"), title
    assert page.text("h1") == ["Verify a claim you received"]
    assert "Verify a claim you received" in page.text("active")
    assert any(block.startswith("detserve verify-claim") for block in page.text("pre"))
    width, _, rows = _screenshot(site / "verify-a-claim.html", tmp_path / "guide.png")
    _assert_drawn(rows, width)


@needs_chromium
def test_a_blank_page_is_not_taken_for_a_drawn_one(tmp_path: Path) -> None:
    """The screenshot checks above can fail: a page that draws nothing does not pass them."""
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><title>detserve</title>\n", encoding="utf-8")
    width, _, rows = _screenshot(blank, tmp_path / "blank.png")
    with pytest.raises(AssertionError):
        _assert_drawn(rows, width)
