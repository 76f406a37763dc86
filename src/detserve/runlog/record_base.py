"""The base of every run-log record and the bounds its fields share.

Every record is a :class:`~detserve.strict_model.StrictModel` (frozen, forbids unknown fields,
validates strictly); each field's docstring becomes its description in the generated JSON Schema
(:func:`~detserve.runlog.schema.run_log_json_schema`).
"""

from __future__ import annotations

from typing import Final

from pydantic import ConfigDict

from detserve.strict_model import StrictModel

#: The most token ids (or logprobs) in one field of a sample.
MAX_TOKENS: Final = 1 << 20
#: The longest ``text`` of a sample, in characters.
MAX_TEXT_CHARS: Final = 1 << 22


class Record(StrictModel):
    model_config = ConfigDict(
        # The schema describes lines as written, where `record` and `format` are always present.
        json_schema_serialization_defaults_required=True,
    )
