"""What a strict profile may ask of the engine: allowlists, never denylists.

A profile reaches the server through three doors: engine options (``vllm.extra_args``), the
container's environment (``runtime.environment``) and its entrypoint (``runtime.entrypoint``).
Each door has an allowlist of exact names, with the reason each entry is safe to pin; anything
else is refused when the profile loads. An allowlist, because a denylist misses what it does not
name, and the server resolves names in ways a denylist cannot follow:

* vLLM's parser (Python argparse) expands any unambiguous prefix of an option name, so
  ``--enable-prefix-cach`` *is* ``--enable-prefix-caching`` to the server. argparse matches an
  exact option name before it tries prefixes, so a name on the allowlist, which is an exact name
  of vLLM 0.32's parser (``tests/integration/test_engine_policy_real.py`` asks the real server's
  parser), can only ever mean itself.
* ``--config FILE`` reads more options from a file the manifest does not pin.
* environment variables such as ``HF_HUB_CACHE``, ``PYTHONPATH`` or ``LD_PRELOAD`` redirect the
  weights or the code to something unverified.

Whatever passes is still a pin: the engine arguments, the environment and the entrypoint are all
recorded in every run log's header, so two claims that differ in any of them are not replays of
each other. "Safe" below means: it reads nothing from outside the pinned image and snapshot and it
does not make one request's tokens depend on another request or on timing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

#: option -> why a strict profile refuses it (shown to the user; rendered in the README)
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
    "--speculative-model": "speculative decoding with a draft model the manifest does not pin",
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
    "--config": "reads further engine options from a file that nothing pins or checks",
    "--chat-template": "a chat template from outside the pinned snapshot is not pinned",
    "--trust-request-chat-template": (
        "lets a request supply its own chat template, which nothing pins"
    ),
    "--default-chat-template-kwargs": (
        "changes what the pinned chat template renders, from outside the snapshot"
    ),
    "--chat-template-content-format": (
        "changes the messages the pinned chat template sees; the server's detection is kept"
    ),
    "--logits-processors": "imports code that rewrites the logits, from outside the pin",
    "--middleware": "imports code into the server, from outside the pin",
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
        "--structured-outputs-config",
    }
)

OptionKind = Literal["flag", "int", "number", "choice"]


@dataclass(frozen=True)
class EngineOption:
    """One engine option a profile may set in ``vllm.extra_args``."""

    kind: OptionKind
    why: str
    choices: tuple[str, ...] = ()


#: Engine options a strict profile may set, by their exact names in vLLM 0.32's parser. A flag
#: takes ``true``; the others a value of their kind.
ENGINE_OPTIONS: Mapping[str, EngineOption] = {
    "--max-num-batched-tokens": EngineOption(
        "int", "the scheduler's token budget per step; a number, read from nowhere else"
    ),
    "--enable-chunked-prefill": EngineOption("flag", "splits long prefills; a scheduler setting"),
    "--no-enable-chunked-prefill": EngineOption("flag", "keeps each prefill whole"),
    "--block-size": EngineOption("int", "KV cache block size; a memory layout setting"),
    "--kv-cache-dtype": EngineOption(
        "choice",
        "the KV cache's element type; numerics, pinned like --dtype",
        ("auto", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2"),
    ),
    "--quantization": EngineOption(
        "choice",
        "how the snapshot's weights are interpreted; the weights themselves are pinned",
        ("awq", "gptq", "fp8", "compressed-tensors", "bitsandbytes", "gguf", "experts_int8"),
    ),
    "--max-logprobs": EngineOption("int", "how many logprobs a request may ask for"),
    "--pipeline-parallel-size": EngineOption("int", "pipeline stages; a parallel layout"),
    "--distributed-executor-backend": EngineOption(
        "choice", "how workers are launched", ("mp", "ray", "uni")
    ),
    "--disable-custom-all-reduce": EngineOption(
        "flag", "uses NCCL's all-reduce instead of vLLM's kernel; a numerics setting"
    ),
    "--enable-expert-parallel": EngineOption("flag", "MoE experts spread over GPUs"),
    "--scheduling-policy": EngineOption(
        "choice", "the order waiting requests are admitted in", ("fcfs",)
    ),
    "--disable-log-stats": EngineOption("flag", "logging only"),
    "--disable-uvicorn-access-log": EngineOption("flag", "logging only"),
    "--uvicorn-log-level": EngineOption(
        "choice", "logging only", ("critical", "error", "warning", "info", "debug", "trace")
    ),
    "--attention-backend": EngineOption(
        "choice",
        "the attention kernel; numerics, pinned",
        ("CPU_ATTN", "FLASH_ATTN", "FLASHINFER", "FLEX_ATTENTION", "TRITON_ATTN"),
    ),
    "--cpu-offload-gb": EngineOption("number", "offloads weights to host memory; capacity only"),
}


@dataclass(frozen=True)
class EnvironmentVariable:
    """One variable a profile may set in ``runtime.environment``."""

    why: str
    pattern: str = r"[A-Za-z0-9_.,:=+-]{1,128}"


#: Environment variables a strict profile may set, with the form their value must have. Nothing
#: here names a path, a URL, a module or a library: those would bring unverified bytes in.
ENVIRONMENT_VARIABLES: Mapping[str, EnvironmentVariable] = {
    "VLLM_CPU_KVCACHE_SPACE": EnvironmentVariable(
        "GiB of KV cache on vLLM's CPU backend; capacity only", r"[0-9]{1,6}"
    ),
    "VLLM_CPU_OMP_THREADS_BIND": EnvironmentVariable(
        "which cores the CPU backend's threads bind to", r"(auto|nobind|[0-9,|-]{1,128})"
    ),
    "VLLM_CPU_NUM_OF_RESERVED_CPU": EnvironmentVariable(
        "cores kept free of the CPU backend's threads", r"[0-9]{1,4}"
    ),
    "OMP_NUM_THREADS": EnvironmentVariable(
        "threads of CPU kernels (a reduction's order may depend on it, so it is a pin)",
        r"[1-9][0-9]{0,3}",
    ),
    "MKL_NUM_THREADS": EnvironmentVariable("threads of MKL kernels", r"[1-9][0-9]{0,3}"),
    "VLLM_BATCH_INVARIANT": EnvironmentVariable(
        "vLLM's batch-invariant kernels: tokens independent of the batch", r"[01]"
    ),
    "CUBLAS_WORKSPACE_CONFIG": EnvironmentVariable(
        "cuBLAS's deterministic workspace", r":(4096|16):8"
    ),
    "NCCL_ALGO": EnvironmentVariable("NCCL's collective algorithm; numerics", r"[A-Za-z,^]{1,64}"),
    "NCCL_PROTO": EnvironmentVariable("NCCL's protocol; numerics", r"[A-Za-z0-9,^]{1,64}"),
    "VLLM_LOGGING_LEVEL": EnvironmentVariable(
        "logging only", r"(DEBUG|INFO|WARNING|ERROR|CRITICAL)"
    ),
    "PYTHONHASHSEED": EnvironmentVariable("Python's hash seed", r"[0-9]{1,10}"),
}

#: What ``vllm.batch_invariant: true`` puts in the container. vLLM 0.32 reads
#: VLLM_BATCH_INVARIANT; its ``override_envs_for_invariance`` then sets CUBLAS_WORKSPACE_CONFIG
#: to ``:4096:8`` itself (with NCCL's single-channel tree settings), so it is set here to the
#: same value, to be pinned and recorded rather than left to the engine.
BATCH_INVARIANT_ENVIRONMENT: Mapping[str, str] = {
    "VLLM_BATCH_INVARIANT": "1",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
}
#: Attention backends of the allowlist that vLLM 0.32 does not support in batch-invariant mode:
#: only FLASH_ATTN, FLEX_ATTENTION and TRITON_ATTN (and the MLA variants FLASH_ATTN_MLA and
#: TRITON_MLA) answer ``supports_batch_invariance()`` with True in the pinned image
#: (vllm/v1/attention/backends/*.py); the documentation names NVIDIA GPUs only.
BATCH_INVARIANT_UNSUPPORTED_BACKENDS: frozenset[str] = frozenset({"FLASHINFER", "CPU_ATTN"})


def batch_invariant_problem(
    environment: Mapping[str, str], extra_args: Mapping[str, object]
) -> str | None:
    """Why a profile's environment and engine options cannot run batch-invariant, or None."""
    for name, value in BATCH_INVARIANT_ENVIRONMENT.items():
        found = environment.get(name)
        if found is not None and found != value:
            return (
                f"vllm.batch_invariant sets {name}={value}; runtime.environment sets {name}={found}"
            )
    backend = extra_args.get("--attention-backend")
    if backend in BATCH_INVARIANT_UNSUPPORTED_BACKENDS:
        return (
            f"vllm.batch_invariant: attention backend {backend} is not supported by vLLM's "
            "batch-invariant mode (FLASH_ATTN, FLEX_ATTENTION or TRITON_ATTN are)"
        )
    return None


#: variables detserve sets itself; a profile or a secrets file may not
RESERVED_ENVIRONMENT: frozenset[str] = frozenset({"HF_HOME", "HF_HUB_OFFLINE"})

#: the module every allowed entrypoint runs: vLLM's OpenAI-compatible server
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
_PYTHON_RE = re.compile(r"^(/[A-Za-z0-9._-]+)*/?python3?(\.[0-9]{1,2})?$")

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


def _expansions(name: str) -> list[str]:
    """Known option names that ``name`` is a strict prefix of (what argparse would expand)."""
    known = set(NONDETERMINISTIC_OPTIONS) | MANAGED_OPTIONS | set(ENGINE_OPTIONS)
    return sorted(option for option in known if option != name and option.startswith(name))


def check_engine_option(name: str, value: object) -> str | None:
    """Why ``name: value`` may not be in ``vllm.extra_args``, or None when it may."""
    normalised = normalise_option(name)
    if normalised in NONDETERMINISTIC_OPTIONS:
        return f"{name} is refused in a strict profile: {NONDETERMINISTIC_OPTIONS[normalised]}"
    if not re.fullmatch(r"--[a-z0-9][a-z0-9-]*", name):
        # The name reaches the server's command line as one word: only a plain option name,
        # never a value, a second option or a shell fragment hidden in it.
        return (
            f"engine option {name!r} must be spelled '--name' in lower case with '-' "
            "(its value goes in the value)"
        )
    if name in MANAGED_OPTIONS:
        return f"{name} is set from the profile's structured fields"
    option = ENGINE_OPTIONS.get(name)
    if option is None:
        expands = _expansions(name)
        if expands:
            return (
                f"{name} is an abbreviation: vLLM's parser would expand it to "
                f"{' or '.join(expands)}; options are accepted by their exact names only"
            )
        return (
            f"{name} is not an engine option a strict profile may set (allowed: "
            f"{', '.join(sorted(ENGINE_OPTIONS))}; `detserve config options` explains each)"
        )
    return _check_value(name, option, value)


def _check_value(name: str, option: EngineOption, value: object) -> str | None:
    if option.kind == "flag":
        return None if value is True else f"{name} is a flag: its value must be true"
    if isinstance(value, bool):
        return f"{name} takes a value, not {str(value).lower()}"
    if option.kind == "int":
        if not isinstance(value, int) or not 0 <= value <= 2**53 - 1:
            return f"{name} takes a non-negative integer, found {value!r}"
        return None
    if option.kind == "number":
        if not isinstance(value, int | float) or not 0 <= value <= 2**53 - 1:
            return f"{name} takes a non-negative number, found {value!r}"
        return None
    if value not in option.choices:
        return f"{name} takes one of {', '.join(option.choices)}, found {value!r}"
    return None


def check_environment_variable(name: str, value: str) -> str | None:
    """Why ``name=value`` may not be in ``runtime.environment``, or None when it may."""
    if name in RESERVED_ENVIRONMENT:
        return f"{name!r} is set by detserve and cannot be overridden"
    variable = ENVIRONMENT_VARIABLES.get(name)
    if variable is None:
        return (
            f"{name!r} is not an environment variable a strict profile may set (allowed: "
            f"{', '.join(sorted(ENVIRONMENT_VARIABLES))}); a variable can redirect the weights "
            "or the code (HF_HUB_CACHE, PYTHONPATH, LD_PRELOAD...), so only known ones pass"
        )
    if not re.fullmatch(variable.pattern, value):
        return f"{name}: value {value[:64]!r} does not have the form {variable.pattern}"
    return None


def check_entrypoint(words: list[str]) -> str | None:
    """Why ``words`` may not be ``runtime.entrypoint``, or None when they may.

    Only a Python interpreter of the image running vLLM's OpenAI server module: anything else
    could run other code, or put engine options ahead of the checked ones.
    """
    if len(words) == 3 and _PYTHON_RE.fullmatch(words[0]) and words[1:] == ["-m", SERVER_MODULE]:
        return None
    return (
        f"the entrypoint must be [PYTHON, '-m', '{SERVER_MODULE}'] (or omitted, for the image's "
        "own); anything else could run other code or add engine options unchecked"
    )
