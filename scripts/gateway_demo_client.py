#!/usr/bin/env python3
"""The end of `make demo`: one chat through the gateway with the official ``openai`` client.

    .venv/bin/python scripts/gateway_demo_client.py http://127.0.0.1:8088

Waits for the gateway's /health, sends one chat, prints the answer and its provenance (the
``detserve`` field and what ``GET /v1/provenance/{id}`` resolves it to) on stderr, and the
transcript segment's file name on stdout, for the replay that follows.
"""

from __future__ import annotations

import json
import sys
import time

import httpx
import openai


def wait_healthy(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the gateway at {url} did not become healthy")
        time.sleep(0.3)


def main(url: str) -> None:
    wait_healthy(url)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    answer = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16,
    )
    provenance = (answer.model_extra or {})["detserve"]
    resolved = httpx.get(f"{url}/v1/provenance/{provenance['id']}", timeout=10).json()
    print(f"chat answer: {answer.choices[0].message.content!r}", file=sys.stderr)
    print(f"provenance: {json.dumps(provenance, indent=2)}", file=sys.stderr)
    print(f"GET /v1/provenance/{provenance['id']}: same record: {resolved == provenance}")
    print(provenance["transcript"])


if __name__ == "__main__":
    main(sys.argv[1])
