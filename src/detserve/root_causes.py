"""What differs between two environments (or two claims' pins), ranked by root-cause category.

When two runs of one claim disagree, the first question is which of the things that can change
tokens differ between them. Each difference is filed under one category, and the categories are
ranked in the order a person should look (the runbook's, most often the cause first):

1. **hardware**: CPU model and flags, GPUs, memory, the device request;
2. **software version**: kernel, GPU driver and CUDA, Docker engine, the image and the vLLM,
   torch and Python in it;
3. **numerics settings**: the numerics environment (``VLLM_*``, ``OMP_*``, ``CUBLAS_*``,
   ``NCCL_*``, ...) and engine arguments that choose kernels or precision;
4. **model files**: the model, its revision and the manifest of its files;
5. **concurrency**: batching and requests in flight (``--max-num-seqs``, the sampling
   concurrency).

What is not an environment at all (the prompts, the sampling parameters, the served name) is
filed last, as **inputs**: such runs are not replays of each other.

Everything here is a pure function of its arguments; nothing is read or asked.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from detserve.fingerprint import EnvironmentFingerprint

Category = Literal[
    "hardware", "software version", "numerics settings", "model files", "concurrency", "inputs"
]

#: the categories, most likely cause first
CATEGORIES: Final[tuple[Category, ...]] = (
    "hardware",
    "software version",
    "numerics settings",
    "model files",
    "concurrency",
    "inputs",
)

#: each field of an environment fingerprint (flattened, numerics variables aside) by category
FINGERPRINT_FIELDS: Final[Mapping[str, Category]] = {
    "host.machine": "hardware",
    "host.cpu_model": "hardware",
    "host.cpu_flags": "hardware",
    "host.cpu_count": "hardware",
    "host.memory_bytes": "hardware",
    "host.gpus": "hardware",
    "host.gpu_reason": "hardware",
    "host.os": "software version",
    "host.kernel": "software version",
    "host.gpu_driver_version": "software version",
    "host.cuda_version": "software version",
    "host.docker_engine_version": "software version",
    "host.docker_api_version": "software version",
    "container.image": "software version",
    "container.image_id": "software version",
    "container.python_version": "software version",
    "container.vllm_version": "software version",
    "container.torch_version": "software version",
}
NUMERICS_PREFIX: Final = "container.numerics_environment."

#: each run-log header field (flattened) by category; ``pins.environment.*`` and
#: ``pins.engine_args`` are decided by what differs in them
HEADER_FIELDS: Final[Mapping[str, Category]] = {
    "pins.device.kind": "hardware",
    "pins.device.gpus": "hardware",
    "pins.image": "software version",
    "pins.vllm_version": "software version",
    "pins.entrypoint": "software version",
    "pins.model_id": "model files",
    "pins.model_revision": "model files",
    "pins.manifest_sha256": "model files",
    "sampling.concurrency": "concurrency",
}

#: engine arguments that decide how many requests are batched together
CONCURRENCY_ARGS: Final = frozenset(
    {
        "--max-num-seqs",
        "--max-num-batched-tokens",
        "--max-num-partial-prefills",
        "--enable-chunked-prefill",
        "--no-enable-chunked-prefill",
        "--pipeline-parallel-size",
        "--tensor-parallel-size",
        "--data-parallel-size",
    }
)

#: how a value that one side does not have is shown
UNSET: Final = "(unset)"


@dataclass(frozen=True)
class Difference:
    """One field whose value differs, under its root-cause category."""

    field: str
    category: Category
    reference: object
    actual: object

    def __str__(self) -> str:
        return f"{self.category}: {self.field}: {_shown(self.reference)} -> {_shown(self.actual)}"

    def as_json(self) -> dict[str, object]:
        return {
            "field": self.field,
            "category": self.category,
            "reference": self.reference,
            "actual": self.actual,
        }


def _shown(value: object) -> str:
    return UNSET if value is None else repr(value)


def rank(differences: Iterable[Difference]) -> tuple[Difference, ...]:
    """Most likely cause first: by category (:data:`CATEGORIES`), then by field name."""
    return tuple(sorted(differences, key=lambda d: (CATEGORIES.index(d.category), d.field)))


def _flatten(document: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def fingerprint_category(field: str) -> Category:
    """The category of a flattened fingerprint field; an unknown field is a software version
    (the fingerprint format grew a field this table does not know)."""
    if field.startswith(NUMERICS_PREFIX):
        return "numerics settings"
    return FINGERPRINT_FIELDS.get(field, "software version")


def _cpu_flags(reference: Sequence[str], actual: Sequence[str]) -> tuple[object, object]:
    # Two hundred flags in full would hide the two that differ.
    only_reference = sorted(set(reference) - set(actual))
    only_actual = sorted(set(actual) - set(reference))
    return (
        {"only here": only_reference, "count": len(reference)},
        {"only here": only_actual, "count": len(actual)},
    )


def fingerprint_differences(
    reference: EnvironmentFingerprint, actual: EnvironmentFingerprint
) -> tuple[Difference, ...]:
    """Every field of ``actual`` that differs from ``reference``, ranked (:func:`rank`)."""
    flat_reference = _flatten(reference.model_dump(mode="json"))
    flat_actual = _flatten(actual.model_dump(mode="json"))
    differences = []
    for field in sorted(flat_reference.keys() | flat_actual.keys()):
        ours, theirs = flat_reference.get(field), flat_actual.get(field)
        if ours == theirs:
            continue
        if field == "host.cpu_flags":
            ours, theirs = _cpu_flags(ours or (), theirs or ())
        differences.append(Difference(field, fingerprint_category(field), ours, theirs))
    return rank(differences)


def _changed_flags(reference: Sequence[str], actual: Sequence[str]) -> set[str]:
    """The flags whose presence or value differs between two engine argument lists."""
    changed = set(reference) ^ set(actual)
    flags = {word.partition("=")[0] for word in changed if word.startswith("-")}
    for words in (reference, actual):
        # a value that changed (``--max-num-seqs 8`` -> ``16``) names the flag before it
        for before, word in itertools.pairwise(words):
            if word in changed and not word.startswith("-"):
                flags.add(before)
    return flags


def _engine_args_category(reference: object, actual: object) -> Category:
    def words(value: object) -> list[str]:
        return [str(word) for word in value] if isinstance(value, list | tuple) else []

    flags = _changed_flags(words(reference), words(actual))
    return "concurrency" if flags & CONCURRENCY_ARGS else "numerics settings"


def header_category(field: str, reference: object = None, actual: object = None) -> Category:
    """The category of a flattened run-log header field (``pins.image``, ``sampling.seed``)."""
    if field.startswith("pins.environment"):
        return "numerics settings"
    if field == "pins.engine_args":
        return _engine_args_category(reference, actual)
    return HEADER_FIELDS.get(field, "inputs")


def header_differences(pairs: Iterable[tuple[str, object, object]]) -> tuple[Difference, ...]:
    """Header fields ``(field, reference value, actual value)`` that differ, ranked."""
    return rank(
        Difference(field, header_category(field, ours, theirs), ours, theirs)
        for field, ours, theirs in pairs
        if ours != theirs
    )
