"""A cluster's layout in a run log's pins: how several nodes served one model together.

:class:`LayoutPins` is the base of :class:`~detserve.runlog.models.EnginePins`: it adds one
field, ``layout``, which a cluster's pins hold and one container's leave out. Absent, never
null: canonical JSON writes a null, so a null field would change every single-node line; left
out, a single-node run log is the same bytes as before clusters existed, and readers refuse an
explicit ``"layout": null`` (a second spelling of the same pins would give the same claim two
hashes). A reader that predates clusters refuses a cluster's header (unknown field): fail closed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from detserve.runlog.record_base import Record


class ClusterLayout(Record):
    """How the nodes of a cluster served together."""

    executor: Literal["mp", "ray"]
    """How vLLM spanned the nodes: its own executor across nodes (``mp``) or Ray."""

    nodes: Annotated[int, Field(ge=2, le=1024)]
    """How many nodes (Docker engines), each one pipeline stage."""

    pipeline_parallel_size: Annotated[int, Field(ge=2, le=1024)]
    """Pipeline stages across the nodes."""

    ray_version: Annotated[str, Field(min_length=1, max_length=128)] | None
    """The Ray version installed in the image, as the head's container reports it; null when
    the image has no Ray."""

    tensor_parallel_size: Annotated[int, Field(ge=1, le=1024)]
    """Tensor parallel degree inside each node."""


def _never_null(schema: dict[str, Any]) -> None:
    """The field's schema: a layout, or absent; pydantic would also allow null."""
    options = schema.pop("anyOf")
    schema.pop("default", None)
    schema.update(next(option for option in options if option.get("type") != "null"))


class LayoutPins(Record):
    """The pins' layout field (see the module's docstring)."""

    layout: ClusterLayout | None = Field(
        default=None, exclude_if=lambda value: value is None, json_schema_extra=_never_null
    )
    """A cluster's layout; absent (never null) for one container."""

    @field_validator("layout", mode="before")
    @classmethod
    def _absent_not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("absent for one container, never null")
        return value
