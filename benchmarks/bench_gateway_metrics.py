"""What do the gateway's metrics cost a request, and a scrape?

    PYTHONPATH=src .venv/bin/python benchmarks/bench_gateway_metrics.py
    PYTHONPATH=src .venv/bin/python benchmarks/bench_gateway_metrics.py --number 200000

In this process, best of ``--repeat`` runs of ``--number`` each:

* ``hooks_us``: the metric work of one answered request: its route and outcome counted, its
  queue wait and its exchange line's fsync observed, the line counted, and the four clock
  reads around the wait and the sync (:mod:`detserve.gateway.metrics`);
* ``middleware_us``: what :class:`~detserve.gateway.metrics.CountedRequests` adds to one ASGI
  request (an application that answers at once, called with and without it, on one event loop);
* ``scrape_ms`` and ``scrape_bytes``: one ``/metrics`` exposition after a thousand requests.

It prints one JSON line, with ``per_request_us`` (hooks and middleware) and the share of a
40 ms request (the gateway's p50 at one request in flight on the tiny CPU model,
docs/performance.md) that is. Exit 0 when it ran; there is no target of its own: the
gateway's p50 overhead target (5 %) is ``bench_gateway.py``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import timeit
from typing import Any

from detserve.gateway.metrics import CountedRequests, GatewayMetrics, GatewayState
from detserve.gateway.verification import SnapshotBounds

#: the gateway's p50 at one request in flight, tiny CPU model (docs/performance.md), in ms
REQUEST_P50_MS = 40.0


def metrics() -> GatewayMetrics:
    bounds = SnapshotBounds(2.0, 640.0, 0.04, 0.0, 0.0)  # as serve reports on 20 GiB
    state = GatewayState(0, 0, 33, "ok", time.time(), time.time(), bounds)
    return GatewayMetrics(lambda: state)


def one_request(counted: GatewayMetrics) -> None:
    """A request's metric work, as the gateway does it (slots.py, runlog/transcript.py)."""
    began = time.perf_counter()
    waited = time.perf_counter() - began
    counted.waited(waited)
    began = time.perf_counter()
    synced = time.perf_counter() - began
    counted.line_written("exchange", synced)
    counted.answered("/v1/completions", 200)


async def answer(_scope: Any, _receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(_message: Any) -> None:
    return None


async def asgi_requests(app: Any, number: int) -> float:
    scope = {"type": "http", "path": "/v1/completions", "method": "POST", "headers": []}
    began = time.perf_counter()
    for _ in range(number):
        await app(scope, _receive, _send)
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=100_000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is kept")
    options = parser.parse_args(argv)
    counted = metrics()
    hooks = min(
        timeit.repeat(lambda: one_request(counted), number=options.number, repeat=options.repeat)
    )
    wrapped = CountedRequests(answer, metrics())
    bare_s, wrapped_s = [], []
    for _ in range(options.repeat):  # interleaved, so that both meet the same machine
        bare_s.append(asyncio.run(asgi_requests(answer, options.number)))
        wrapped_s.append(asyncio.run(asgi_requests(wrapped, options.number)))
    middleware = (min(wrapped_s) - min(bare_s)) / options.number
    scraped = metrics()
    for _ in range(1000):
        one_request(scraped)
    scrape = min(timeit.repeat(scraped.exposition, number=100, repeat=options.repeat)) / 100
    per_request_us = hooks / options.number * 1e6 + middleware * 1e6
    record = {
        "number": options.number,
        "repeat": options.repeat,
        "hooks_us": round(hooks / options.number * 1e6, 3),
        "middleware_us": round(middleware * 1e6, 3),
        "per_request_us": round(per_request_us, 3),
        "share_of_request_p50_percent": round(per_request_us / (REQUEST_P50_MS * 1e3) * 100, 4),
        "scrape_ms": round(scrape * 1e3, 3),
        "scrape_bytes": len(scraped.exposition()),
        "python": sys.version.split()[0],
    }
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
