"""A profile's ``prompts`` section: the prompt bundle the profile samples, and its pin.

A bundle is measured with one model's tokenizer (:mod:`detserve.prompts`), so the profile of that
model names it: ``sample``, ``check``, ``replay`` and ``fleet`` take it from here unless
``--bundle``/``--bundle-pin`` say otherwise (:mod:`detserve.bundle_binding`, which also checks
that the bundle was measured on the profile's model). Both paths are relative to the profile
file's directory, as ``snapshot.hf_home`` is. The section is optional: a profile without one (a
GPU profile before its bundle is bootstrapped) is valid, and the commands that sample say which
field to set and how to build the bundle.

The section names files; it decides nothing the server computes, so it is left out of the
profile's content hash (the container's binding label): pointing a profile at another bundle
does not make its running container another server.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from detserve.strict_model import StrictModel


class PromptsSpec(StrictModel):
    bundle: str = Field(min_length=1, max_length=4096)
    """The prompt bundle directory (``bundle.json`` and ``prompts.jsonl``), e.g.
    ``../artifacts/reference_prompts``; relative to the profile file's directory."""

    manifest: str = Field(min_length=1, max_length=4096)
    """The bundle's pin, the manifest of its two files (``detserve hash --snapshot BUNDLE``),
    e.g. ``../manifests/reference_prompts/reference_prompts.sha256``; relative to the profile
    file's directory."""

    @field_validator("bundle", "manifest")
    @classmethod
    def _path(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("a path cannot hold a NUL character")
        return value
