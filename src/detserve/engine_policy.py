"""Which vLLM engine options a strict profile refuses, and why.

Each entry is an option known to make one run's tokens depend on something other than the pinned
inputs: earlier requests, scheduler timing, weights or code from outside the snapshot. The reason
is shown to the user when a profile asks for the option, and the table is rendered in the README.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

#: option -> why a strict profile refuses it
NONDETERMINISTIC_OPTIONS: Mapping[str, str] = {
    "--enable-prefix-caching": (
        "a prompt whose prefix is cached skips its prefill and reuses KV computed for an earlier "
        "request, through a different kernel path; tokens then depend on request history "
        "(detserve always passes --no-enable-prefix-caching)"
    ),
    "--speculative-config": (
        "speculative decoding accepts draft tokens by comparing two models' numerics; ties and "
        "batch-dependent kernels change which tokens are accepted"
    ),
    "--num-speculative-tokens": "speculative decoding (see --speculative-config)",
    "--async-scheduling": (
        "overlaps scheduling with execution, so batch composition depends on timing"
    ),
    "--load-format": (
        "anything but the snapshot's safetensors (e.g. 'dummy' random weights) serves weights the "
        "manifest does not pin"
    ),
    "--tokenizer": "a tokenizer from elsewhere than the pinned snapshot is not pinned",
    "--tokenizer-revision": "the tokenizer is pinned by the model revision; no second revision",
    "--code-revision": "code is pinned by the model revision; no second revision",
    "--trust-remote-code": (
        "remote code runs arbitrary Python at load time, which may import or fetch what the "
        "manifest does not pin"
    ),
    "--hf-overrides": "changes the model configuration from outside the pinned snapshot",
    "--enable-lora": "LoRA adapters are weights the manifest does not pin",
    "--lora-modules": "LoRA adapters are weights the manifest does not pin",
    "--download-dir": "weights must come from the mounted, verified Hugging Face cache",
    "--seed": "set from sampling.seed only, so the log and the server cannot disagree",
    "--generation-config": (
        "default sampling parameters from another source could override greedy decoding"
    ),
    "--override-generation-config": (
        "default sampling parameters from another source could override greedy decoding"
    ),
}

#: options detserve writes itself from structured profile fields; an extra arg may not repeat them
MANAGED_OPTIONS: frozenset[str] = frozenset(
    {
        "--model",
        "--revision",
        "--served-model-name",
        "--dtype",
        "--max-model-len",
        "--tensor-parallel-size",
        "--gpu-memory-utilization",
        "--max-num-seqs",
        "--enforce-eager",
        "--host",
        "--port",
        "--no-enable-prefix-caching",
    }
)

_PACKAGE_INSTALL = re.compile(
    # `pip3.11` is as much pip as `pip`: the version suffix must not hide an install.
    r"\b(pip(3(\.\d+)?)?|uv|apt(-get)?|conda|mamba|micromamba|dnf|yum|apk|poetry|easy_install)\b"
    r"(\s+\S+)*?\s+(install|add|sync|upgrade)\b",
    re.IGNORECASE,
)


def installs_packages(words: Iterable[str]) -> bool:
    """True when a command line (as separate words) would install packages at start."""
    return bool(_PACKAGE_INSTALL.search(" ".join(words)))


def normalise_option(name: str) -> str:
    """``enable_prefix_caching`` and ``--enable-prefix-caching`` name the same option."""
    bare = name.strip().lstrip("-").replace("_", "-").split("=", 1)[0]
    return f"--{bare}"
