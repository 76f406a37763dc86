"""The one base of detserve's pydantic models: frozen, closed and strict.

A value read from a file, a container or a request is either exactly what the model says or an
error: no unknown field is dropped (``extra="forbid"``), no ``"1"`` becomes ``1`` (``strict``),
and nothing read can be changed afterwards (``frozen``). Each field's docstring is its
description, in messages and in the JSON Schemas generated from the models
(``use_attribute_docstrings``).

Invariant: every model in ``src/detserve`` derives from :class:`StrictModel` (a test reads the
source to hold this). A subclass may add settings (aliases, schema options) but loosens one of
the three only with a comment saying why: the answers of a vLLM server are read with
``extra="ignore"``, since the fields it adds are its business.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A frozen model that forbids unknown fields and validates strictly."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, use_attribute_docstrings=True
    )
