"""Environment differences ranked by root-cause category: a pure function, each rule shown."""

from __future__ import annotations

import pytest

from detserve.fingerprint import ContainerFingerprint, HostFingerprint
from detserve.root_causes import (
    CATEGORIES,
    FINGERPRINT_FIELDS,
    Difference,
    fingerprint_differences,
    header_category,
    header_differences,
    rank,
)

from .fingerprints import make_fingerprint


def test_the_same_environment_has_no_difference() -> None:
    assert fingerprint_differences(make_fingerprint(), make_fingerprint()) == ()


def test_a_numerics_variable_is_named_with_both_values() -> None:
    perturbed = make_fingerprint(
        container__numerics_environment={"VLLM_BATCH_INVARIANT": "1", "OMP_NUM_THREADS": "1"}
    )
    (difference,) = fingerprint_differences(make_fingerprint(), perturbed)
    assert difference == Difference(
        "container.numerics_environment.OMP_NUM_THREADS", "numerics settings", None, "1"
    )
    assert str(difference) == (
        "numerics settings: container.numerics_environment.OMP_NUM_THREADS: (unset) -> '1'"
    )


def test_differences_are_ranked_hardware_then_software_then_numerics() -> None:
    other = make_fingerprint(
        host__gpus=[{"name": "NVIDIA H100", "memory_mib": 81559}],
        host__gpu_driver_version="550.54",
        container__vllm_version="0.31.0",
        container__numerics_environment={},
    )
    ranked = fingerprint_differences(make_fingerprint(), other)
    assert [(d.category, d.field) for d in ranked] == [
        ("hardware", "host.gpus"),
        ("software version", "container.vllm_version"),
        ("software version", "host.gpu_driver_version"),
        ("numerics settings", "container.numerics_environment.VLLM_BATCH_INVARIANT"),
    ]


def test_cpu_flags_name_only_the_flags_that_differ() -> None:
    other = make_fingerprint(host__cpu_flags=["avx2", "sse4_2"])
    (difference,) = fingerprint_differences(make_fingerprint(), other)
    assert difference.category == "hardware"
    assert difference.reference == {"only here": ["avx512f"], "count": 3}
    assert difference.actual == {"only here": [], "count": 2}


def test_every_fingerprint_field_has_a_category() -> None:
    # A field the table does not know would fall back to "software version" unnoticed.
    host = {f"host.{name}" for name in HostFingerprint.model_fields}
    container = {
        f"container.{name}"
        for name in ContainerFingerprint.model_fields
        if name != "numerics_environment"
    }
    assert host | container == set(FINGERPRINT_FIELDS)


@pytest.mark.parametrize(
    ("field", "reference", "actual", "category"),
    [
        ("pins.manifest_sha256", "a", "b", "model files"),
        ("pins.model_revision", "a", "b", "model files"),
        ("pins.image", "a", "b", "software version"),
        ("pins.vllm_version", "a", "b", "software version"),
        ("pins.device.gpus", 1, 2, "hardware"),
        ("pins.environment.OMP_NUM_THREADS", None, "1", "numerics settings"),
        ("sampling.concurrency", 1, 4, "concurrency"),
        ("sampling.seed", 0, 1, "inputs"),
        ("pins.prompt_bundle_sha256", "a", "b", "inputs"),
        (
            "pins.engine_args",
            ["--max-num-seqs", "8", "--dtype", "float32"],
            ["--max-num-seqs", "16", "--dtype", "float32"],
            "concurrency",
        ),
        (
            "pins.engine_args",
            ["--max-num-seqs", "8", "--dtype", "float32"],
            ["--max-num-seqs", "8", "--dtype", "bfloat16"],
            "numerics settings",
        ),
        ("pins.engine_args", ["--seed", "0"], ["--seed", "0", "--max-num-seqs=4"], "concurrency"),
    ],
)
def test_header_fields_by_category(
    field: str, reference: object, actual: object, category: str
) -> None:
    assert header_category(field, reference, actual) == category


def test_header_differences_are_ranked_and_equal_values_dropped() -> None:
    ranked = header_differences(
        [
            ("sampling.concurrency", 1, 4),
            ("pins.manifest_sha256", "a", "b"),
            ("pins.image", "x", "x"),
            ("pins.device.kind", "cpu", "gpu"),
        ]
    )
    assert [d.category for d in ranked] == ["hardware", "model files", "concurrency"]


def test_rank_follows_the_category_order() -> None:
    shuffled = [Difference(f"f{i}", c, 1, 2) for i, c in enumerate(reversed(CATEGORIES))]
    assert [d.category for d in rank(shuffled)] == list(CATEGORIES)
