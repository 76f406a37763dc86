"""The JSON Schema of a run-log line, generated from the records (:mod:`~detserve.runlog.models`).

The file committed at ``src/detserve/schemas/run-log.schema.json`` is :func:`run_log_json_schema`,
printed by ``python -m detserve.runlog``; ``tests/unit/test_runlog.py`` checks that the committed
file is the generated one.
"""

from __future__ import annotations

from typing import Any, Final

from detserve.runlog.models import RECORD_ADAPTER

SCHEMA_ID: Final = "https://detserve.invalid/schemas/run-log.schema.json"


def run_log_json_schema() -> dict[str, Any]:
    """The JSON Schema of one run-log line (committed as ``schemas/run-log.schema.json``)."""
    schema = RECORD_ADAPTER.json_schema(mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "detserve run-log line",
        "description": (
            "One line of a detserve run log (canonical JSON Lines): a header, then one sample "
            "per prompt in index order, then a footer. Beyond this schema, readers require "
            "RFC 8785 canonical JSON (JCS) and the rules across lines (order, counts, the "
            "footer's hash)."
        ),
        **schema,
    }
