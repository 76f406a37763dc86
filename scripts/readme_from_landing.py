"""Print README.md: the documentation site's landing page, docs/index.md, with its links into docs/.

The README is the landing page's content plus links, and nothing else, so that the two cannot
say different things: edit docs/index.md and run ``make schemas``, which writes README.md with
this script. tests/unit/test_docs_site.py requires the committed README to be this script's
output. A link relative to the landing page (``setup.md``, ``reference/cli.md#detserve-verify``)
becomes one relative to the repository's root (``docs/setup.md``...), where GitHub finds it; web
addresses and links to anchors of the page itself are left as they are.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LANDING = REPO_ROOT / "docs" / "index.md"
NOTICE = (
    "<!-- Generated from docs/index.md by scripts/readme_from_landing.py (make schemas): "
    "edit that page, not this file. -->"
)
#: a Markdown inline link's target, when it is a path relative to the page
_RELATIVE_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|#|/)([^)\s]+)\)")


def readme(landing: str) -> str:
    """The README for the landing page's text ``landing``."""
    return NOTICE + "\n\n" + _RELATIVE_LINK.sub(r"](docs/\1)", landing)


if __name__ == "__main__":
    text = readme(LANDING.read_text(encoding="utf-8"))
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
