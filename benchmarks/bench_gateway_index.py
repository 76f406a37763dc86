"""What does the gateway's start-up index of earlier transcripts cost?

    PYTHONPATH=src .venv/bin/python benchmarks/bench_gateway_index.py                 # 10,000
    PYTHONPATH=src .venv/bin/python benchmarks/bench_gateway_index.py --exchanges 2000

It writes a transcript directory as the gateway does (TranscriptWriter through the gateway's
Transcript, rotated every ``--rotate`` exchanges): completions of a 60-character prompt with
24 prompt tokens and 64 output tokens, one in four with a JSON Schema constraint. Then it times
:func:`detserve.gateway.transcript_segments.index_earlier` (every line read and checked, every chain
checked, every exchange indexed), the best of ``--repeat`` runs, in this process, and prints
one JSON line: exchanges, segments, bytes, seconds, exchanges per second, and the peak resident
memory of the process. Exit 0 when it ran; there is no target.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from detserve.gateway.transcript_segments import Transcript, index_earlier
from detserve.runlog.models import DevicePins, EnginePins, ExchangeRequest, TranscriptHeader

PINS = EnginePins(
    model_id="detserve/tiny-llama",
    model_revision="b" * 40,
    manifest_sha256="c" * 64,
    image="127.0.0.1:5000/detserve/vllm-cpu@sha256:" + "a" * 64,
    engine_args=("--model", "/m", "--seed", "0"),
    entrypoint=None,
    environment={"HF_HUB_OFFLINE": "1"},
    device=DevicePins(kind="cpu", gpus=0),
    served_model_name="tiny-llama",
    vllm_version="0.32.0",
)
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def write(directory: Path, exchanges: int, rotate: int) -> None:
    header = TranscriptHeader(
        pins=PINS, previous_sha256=None, seed=0, segment=0, transcript_id="d" * 32
    )
    transcript = Transcript(directory, header, pins_sha256="0" * 64, rotate_exchanges=rotate)
    for number in range(exchanges):
        constrained = number % 4 == 0
        request = ExchangeRequest.model_validate_json(
            json.dumps(
                {
                    "kind": "completion",
                    "max_tokens": 64,
                    "messages": None,
                    "prompt": f"Question {number:08d}: what follows in this sentence, word",
                    "response_format": None,
                    "stop": None,
                    "structured_outputs": (
                        json.dumps({"json": SCHEMA}, separators=(",", ":")) if constrained else None
                    ),
                }
            )
        )
        fields = {
            "constraint_check": "satisfied" if constrained else None,
            "delivery": "delivered",
            "finish_reason": "length",
            "incomplete": None,
            "output_token_ids": [(number * 7 + i) % 32000 for i in range(64)],
            "prompt_token_ids": [(number + i) % 32000 for i in range(24)],
            "text": '{"a": 1}' if constrained else " word" * 64,
        }
        transcript.record(f"{number:032x}", request, fields)
    transcript.close("stopped")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=10_000)
    parser.add_argument("--rotate", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="detserve-bench-index-") as folder:
        directory = Path(folder)
        started = time.perf_counter()
        write(directory, options.exchanges, options.rotate)
        written_s = time.perf_counter() - started
        size = sum(path.stat().st_size for path in directory.iterdir())
        best = float("inf")
        for _ in range(options.repeat):
            started = time.perf_counter()
            earlier = index_earlier(directory)
            best = min(best, time.perf_counter() - started)
        assert len(earlier.index) == options.exchanges
        record = {
            "exchanges": options.exchanges,
            "segments": sum(len(one.segments) for one in earlier.series),
            "bytes": size,
            "write_s": round(written_s, 3),
            "index_s": round(best, 3),
            "exchanges_per_s": round(options.exchanges / best),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "python": sys.version.split()[0],
        }
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
