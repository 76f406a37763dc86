"""The one image-reference parser: pins by digest only, spelt as the engine spells them."""

from __future__ import annotations

import re

import pytest

from detserve.errors import EXIT_INPUT, InputError
from detserve.imageref import DIGEST_REF_PATTERN, ImageRef, is_digest_ref, repository_of_tag

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "repository", "registry", "normalised"),
    [
        (
            f"127.0.0.1:5000/detserve/vllm-cpu@{DIGEST}",
            "127.0.0.1:5000/detserve/vllm-cpu",
            "127.0.0.1:5000",
            f"127.0.0.1:5000/detserve/vllm-cpu@{DIGEST}",
        ),
        (
            f"vllm/vllm-openai@{DIGEST}",
            "vllm/vllm-openai",
            "docker.io",
            f"docker.io/vllm/vllm-openai@{DIGEST}",
        ),
        (f"ubuntu@{DIGEST}", "ubuntu", "docker.io", f"docker.io/library/ubuntu@{DIGEST}"),
        (f"localhost/x@{DIGEST}", "localhost/x", "localhost", f"localhost/x@{DIGEST}"),
    ],
)
def test_digest_references_parse(
    text: str, repository: str, registry: str, normalised: str
) -> None:
    ref = ImageRef.parse(text)
    assert (ref.repository, ref.digest, ref.registry) == (repository, DIGEST, registry)
    assert ref.normalised() == normalised
    assert str(ref) == text
    assert re.match(DIGEST_REF_PATTERN, text)


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1:5000/detserve/vllm-cpu:0.32.0",
        f"127.0.0.1:5000/detserve/vllm-cpu:0.32.0@{DIGEST}",  # a tag and a digest: two things
        f"repo@sha256:{'ab' * 31}",
        f"repo@sha256:{'AB' * 32}",
        f"Repo@{DIGEST}",
        f"repo@{DIGEST}\n",
        "",
    ],
)
def test_anything_but_a_digest_reference_is_refused(text: str) -> None:
    assert not is_digest_ref(text)
    assert not re.match(DIGEST_REF_PATTERN, text) or text.endswith("\n")
    with pytest.raises(InputError) as raised:
        ImageRef.parse(text)
    assert raised.value.exit_code == EXIT_INPUT


def test_a_tag_names_its_repository() -> None:
    assert repository_of_tag("127.0.0.1:5000/detserve/vllm-cpu:0.32.0") == (
        "127.0.0.1:5000/detserve/vllm-cpu"
    )
    with pytest.raises(InputError):
        repository_of_tag(f"repo@{DIGEST}")
