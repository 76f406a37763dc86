"""Print docs/reference/gateway-openapi.json: the gateway's OpenAPI document, for the default
profile (``configs/tiny-cpu.json``) with an API key.

The document is built by the gateway's own code (:func:`detserve.gateway.openapi.
openapi_document`, its request bodies from admission's definitions), never written by hand; a
running gateway serves its own at ``GET /openapi.json``, with its profile's model name, seed and
``max_model_len``, and names the bearer scheme only when it has a key. ``make schemas`` writes
the file; tests/unit/test_gateway_openapi.py regenerates it in memory and requires the committed
file to be the same bytes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from detserve.gateway.admission import Policy
from detserve.gateway.openapi import openapi_document
from detserve.profile import load_profile

PROFILE = Path(__file__).resolve().parent.parent / "configs" / "tiny-cpu.json"


def document() -> str:
    """The document's text: JSON, two-space indents, keys in the order built, one final newline."""
    policy = Policy.of_profile(load_profile(PROFILE).profile)
    return json.dumps(openapi_document(policy, keyed=True), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    text = document()
    if len(sys.argv) > 1:
        target = Path(sys.argv[1])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
