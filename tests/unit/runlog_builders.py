"""Valid run logs for tests: a header, samples and the file, built from small parameters."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detserve.canonical import canonical_bytes
from detserve.runlog import write_run_log


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_header(n_samples: int, *, logprobs: int | None = 1, **pins: Any) -> dict[str, Any]:
    """A header as the sampler builds it: no ``record`` or ``format`` keys."""
    return {
        "pins": {
            "model_id": "detserve/tiny-llama",
            "model_revision": "b" * 40,
            "manifest_sha256": sha("manifest"),
            "image": "localhost:5000/detserve/vllm-cpu@sha256:" + "c" * 64,
            "prompt_bundle_sha256": sha("bundle"),
            "vllm_version": "0.6.3",
            "engine_args": ["--seed", "0", "--max-model-len", "512"],
            "served_model_name": "tiny",
            "environment": {"HF_HOME": "/hf-home", "HF_HUB_OFFLINE": "1"},
            "entrypoint": None,
            "device": {"kind": "cpu", "gpus": 0},
        }
        | pins,
        "sampling": {
            "temperature": 0.0,
            "seed": 0,
            "max_tokens": 16,
            "logprobs": logprobs,
        },
        "n_samples": n_samples,
    }


def make_sample(
    index: int, *, logprobs: bool = True, output: Sequence[int] | None = None
) -> dict[str, Any]:
    """Sample ``index``: 6 prompt tokens, 12 output tokens derived from the index."""
    tokens = list(output) if output is not None else [(index * 7 + i) % 1000 for i in range(12)]
    return {
        "index": index,
        "prompt_id": f"prompt-{index:04d}",
        "prompt_sha256": sha(f"prompt {index}"),
        "request_sha256": sha(f"request {index}"),
        "kind": "completion",
        "constraint": None,
        "constraint_sha256": None,
        "constraint_satisfied": None,
        "prompt_token_ids": [1, 100 + index % 50, 2, 3, 4, 5],
        "output_token_ids": tokens,
        "text": " ".join(f"w{t}" for t in tokens) + " é",
        "finish_reason": "length",
        "logprobs": [-(t % 17) / 8 - 1e-6 * (t % 3) for t in tokens] if logprobs else None,
    }


def write_log(
    path: Path,
    n_samples: int = 5,
    *,
    logprobs: bool = True,
    samples: list[dict[str, Any]] | None = None,
    **pins: Any,
) -> Path:
    header = make_header(n_samples, logprobs=1 if logprobs else None, **pins)
    if samples is None:
        samples = [make_sample(i, logprobs=logprobs) for i in range(n_samples)]
    write_run_log(path, header, samples)
    return path


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def with_footer(lines: list[bytes]) -> list[bytes]:
    """``lines`` (header and samples) with a footer that matches them."""
    samples = lines[1:]
    footer = {
        "record": "footer",
        "n_samples": len(samples),
        "header_sha256": hashlib.sha256(lines[0]).hexdigest(),
        "samples_sha256": hashlib.sha256(b"".join(samples)).hexdigest(),
    }
    return [*lines, canonical_bytes(footer)]
