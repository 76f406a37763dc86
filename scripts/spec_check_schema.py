"""The JSON Schema (draft 2020-12) subset the run-log schema uses, as docs/spec/run-log.md
section 2.2 reads it; part of the independent checker (``scripts/spec_check.py``).

Standard library only. Three points are the specification's, not JSON Schema's defaults: an
``integer`` is a number written without fraction or exponent (a Python ``int``, never a
``bool``); ``pattern`` is ECMA-262, where ``$`` matches only at the very end; lengths count code
points. A keyword this validator does not know is an error, so that a schema change that needs
more of JSON Schema is noticed instead of passing unchecked.
"""

from __future__ import annotations

import math
import re
from functools import cache
from typing import Any, Final

#: keywords that annotate and never reject
_ANNOTATIONS: Final = frozenset(
    {"$schema", "$id", "title", "description", "default", "discriminator", "examples"}
)


class SchemaError(ValueError):
    """A value the schema does not accept; the message names where."""


@cache
def ecma_pattern(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled so that Python matches what ECMA-262 matches: ``$`` outside a
    character class is the end of the string (``\\Z``), never before a final newline."""
    out: list[str] = []
    in_class = escaped = False
    for char in pattern:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            out.append(char)
            escaped = True
        elif in_class:
            out.append(char)
            in_class = char != "]"
        elif char == "[":
            out.append(char)
            in_class = True
        elif char == "$":
            out.append(r"\Z")
        else:
            out.append(char)
    return re.compile("".join(out))


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        if isinstance(value, bool):
            return False
        return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    expected = {"string": str, "boolean": bool, "null": type(None), "object": dict, "array": list}
    return isinstance(value, expected[kind])


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: a boolean is not a number; 1 and 1.0 are one number."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) and isinstance(a, int | float) == isinstance(b, int | float)


class Validator:
    """Validates JSON values against one schema document (``$ref`` within it only)."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.root = schema

    def _resolve(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#/"):
            raise SchemaError(f"unsupported $ref {ref!r}")
        node: Any = self.root
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        if not isinstance(node, dict):
            raise SchemaError(f"$ref {ref!r} is not a schema")
        return node

    def validate(self, value: Any, schema: dict[str, Any] | None = None, at: str = "") -> Any:
        """``value`` as the schema reads it (an ``int`` where the schema says ``number`` becomes
        the nearest double, section 2.2), or :class:`SchemaError`."""
        return self._check(value, self.root if schema is None else schema, at or "(record)")

    def _check(self, value: Any, schema: dict[str, Any], at: str) -> Any:
        for keyword in schema:
            if keyword not in _KNOWN and keyword not in _ANNOTATIONS:
                raise SchemaError(f"{at}: the schema uses {keyword!r}, which this checker lacks")
        if "$ref" in schema:
            value = self._check(value, self._resolve(schema["$ref"]), at)
        if "type" in schema:
            kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            if not any(_type_ok(value, kind) for kind in kinds):
                raise SchemaError(f"{at}: not of type {'/'.join(kinds)}")
            if "number" in kinds and "integer" not in kinds and type(value) is int:
                value = float(value)  # section 2.2: the nearest double
                if not math.isfinite(value):
                    raise SchemaError(f"{at}: beyond a double")
        if "const" in schema and not _equal(value, schema["const"]):
            raise SchemaError(f"{at}: not {schema['const']!r}")
        if "enum" in schema and not any(_equal(value, option) for option in schema["enum"]):
            raise SchemaError(f"{at}: not one of {schema['enum']!r}")
        if isinstance(value, str):
            self._string(value, schema, at)
        if isinstance(value, int | float) and not isinstance(value, bool):
            self._number(value, schema, at)
        if isinstance(value, list):
            value = self._array(value, schema, at)
        if isinstance(value, dict):
            value = self._object(value, schema, at)
        for keyword in ("anyOf", "oneOf"):
            if keyword in schema:
                value = self._alternatives(value, schema[keyword], keyword, at)
        for branch in schema.get("allOf", ()):
            value = self._check(value, branch, at)
        return value

    def _alternatives(
        self, value: Any, branches: list[dict[str, Any]], keyword: str, at: str
    ) -> Any:
        passed: list[Any] = []
        reasons: list[str] = []
        for branch in branches:
            try:
                passed.append(self._check(value, branch, at))
            except SchemaError as exc:
                reasons.append(str(exc))
        if not passed:
            raise SchemaError(
                reasons[0]
                if len(reasons) == 1
                else f"{at}: matches no {keyword} branch ({'; '.join(reasons[:3])})"
            )
        if keyword == "oneOf" and len(passed) > 1:
            raise SchemaError(f"{at}: matches {len(passed)} oneOf branches")
        return passed[0]

    @staticmethod
    def _string(value: str, schema: dict[str, Any], at: str) -> None:
        length = len(value)  # code points
        if length < schema.get("minLength", 0):
            raise SchemaError(f"{at}: shorter than {schema['minLength']}")
        if "maxLength" in schema and length > schema["maxLength"]:
            raise SchemaError(f"{at}: longer than {schema['maxLength']}")
        if "pattern" in schema and not ecma_pattern(schema["pattern"]).search(value):
            raise SchemaError(f"{at}: does not match {schema['pattern']}")

    @staticmethod
    def _number(value: float, schema: dict[str, Any], at: str) -> None:
        if "minimum" in schema and value < schema["minimum"]:
            raise SchemaError(f"{at}: below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise SchemaError(f"{at}: above {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            raise SchemaError(f"{at}: not above {schema['exclusiveMinimum']}")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            raise SchemaError(f"{at}: not below {schema['exclusiveMaximum']}")

    def _array(self, value: list[Any], schema: dict[str, Any], at: str) -> list[Any]:
        if len(value) < schema.get("minItems", 0):
            raise SchemaError(f"{at}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise SchemaError(f"{at}: more than {schema['maxItems']} items")
        if "items" in schema:
            return [
                self._check(item, schema["items"], f"{at}[{i}]") for i, item in enumerate(value)
            ]
        return value

    def _object(self, value: dict[str, Any], schema: dict[str, Any], at: str) -> dict[str, Any]:
        if len(value) < schema.get("minProperties", 0):
            raise SchemaError(f"{at}: fewer than {schema['minProperties']} members")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            raise SchemaError(f"{at}: more than {schema['maxProperties']} members")
        for name in schema.get("required", ()):
            if name not in value:
                raise SchemaError(f"{at}: no member {name!r}")
        properties = schema.get("properties", {})
        patterns = schema.get("patternProperties", {})
        out = {}
        for name, item in value.items():
            where = f"{at}.{name}"
            if "propertyNames" in schema:
                self._check(name, schema["propertyNames"], f"{where} (name)")
            item_out, matched = item, False
            if name in properties:
                item_out, matched = self._check(item, properties[name], where), True
            for pattern, sub in patterns.items():
                if ecma_pattern(pattern).search(name):
                    item_out, matched = self._check(item_out, sub, where), True
            if not matched:
                extra = schema.get("additionalProperties", True)
                if extra is False:
                    raise SchemaError(f"{where}: a member the schema does not allow")
                if isinstance(extra, dict):
                    item_out = self._check(item, extra, where)
            out[name] = item_out
        return out


_KNOWN: Final = frozenset(
    {
        "$ref",
        "$defs",
        "type",
        "const",
        "enum",
        "anyOf",
        "oneOf",
        "allOf",
        "minLength",
        "maxLength",
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "items",
        "minItems",
        "maxItems",
        "properties",
        "required",
        "additionalProperties",
        "patternProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
    }
)
