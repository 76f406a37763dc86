"""Attestations as docs/spec/run-log.md section 9 defines them: the envelope, the statement, the
predicate, and the order in which a verifier checks them (section 9.6); part of the independent
checker (``scripts/spec_check.py``)."""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Final

import rfc8785

from spec_check_crypto import KeyRefused, load_public_key
from spec_check_lines import Refused, validator, verify_run_log
from spec_check_schema import SchemaError, Validator

MAX_DOCUMENT_BYTES: Final = 4 * 1024 * 1024
MAX_DEPTH: Final = 64
MAX_SIGNATURES: Final = 16
PAYLOAD_TYPE: Final = "application/vnd.in-toto+json"
MAX_EXACT_INTEGER: Final = 2**53 - 1


def _read(path: Path, what: str) -> bytes:
    data = path.read_bytes()
    if len(data) > MAX_DOCUMENT_BYTES:
        raise Refused(f"{what}.json", f"{path}: over {MAX_DOCUMENT_BYTES} bytes")
    return data


def _depth_ok(value: Any) -> bool:
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > MAX_DEPTH:
            return False
        if isinstance(item, dict):
            pending.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            pending.extend((v, depth + 1) for v in item)
    return True


def read_ijson(data: bytes, where: str) -> Any:
    """[envelope.json]'s I-JSON (ValueError for anything else)."""
    if data.startswith(b"\xef\xbb\xbf"):
        raise ValueError(f"{where}: a byte-order mark")
    text = data.decode("utf-8")  # UnicodeDecodeError is a ValueError

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({name for name, _ in pairs}) != len(pairs):
            raise ValueError(f"{where}: a member name twice")
        return dict(pairs)

    def constant(name: str) -> Any:
        raise ValueError(f"{where}: {name} is not JSON")

    try:
        value = json.loads(text, object_pairs_hook=unique, parse_constant=constant)
    except RecursionError:
        raise ValueError(f"{where}: nested too deeply") from None
    if not _depth_ok(value):
        raise ValueError(f"{where}: nested deeper than {MAX_DEPTH}")
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            item.encode("utf-8")  # a lone surrogate: UnicodeEncodeError, a ValueError
        elif isinstance(item, dict):
            pending.extend([*item.keys(), *item.values()])
        elif isinstance(item, list):
            pending.extend(item)
    return value


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("not a string")
    return base64.b64decode(value, validate=True)


def parse_envelope(data: bytes, where: str) -> tuple[bytes, str, list[bytes]]:
    """[envelope.json], [envelope.shape]: the payload, its type and the signatures."""
    try:
        document = read_ijson(data, where)
    except ValueError as exc:
        raise Refused("envelope.json", str(exc)) from None
    shape = "envelope.shape"
    if not isinstance(document, dict) or set(document) != {"payload", "payloadType", "signatures"}:
        raise Refused(shape, f"{where}: not exactly payload, payloadType, signatures")
    entries = document["signatures"]
    if not isinstance(document["payloadType"], str) or not isinstance(entries, list):
        raise Refused(shape, f"{where}: payloadType or signatures of the wrong type")
    if len(entries) > MAX_SIGNATURES:
        raise Refused(shape, f"{where}: {len(entries)} signatures")
    try:
        payload = _b64(document["payload"])
        signatures, keyids = [], set()
        for entry in entries:
            if not isinstance(entry, dict) or set(entry) != {"keyid", "sig"}:
                raise ValueError("a signature is not exactly keyid, sig")
            if not isinstance(entry["keyid"], str) or entry["keyid"] in keyids:
                raise ValueError("a key id that is not a string, or twice")
            keyids.add(entry["keyid"])
            signatures.append(_b64(entry["sig"]))
    except (ValueError, binascii.Error) as exc:
        raise Refused(shape, f"{where}: {exc}") from None
    return payload, document["payloadType"], signatures


def pae(payload_type: str, payload: bytes) -> bytes:
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 " + b"%d " % len(kind) + kind + b" %d " % len(payload) + payload


def _text(limit: int, nullable: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "maxLength": limit}
    return {"anyOf": [schema, {"type": "null"}]} if nullable else schema


def _count(nullable: bool = True) -> dict[str, Any]:
    schema = {"type": "integer", "minimum": 0, "maximum": MAX_EXACT_INTEGER}
    return {"anyOf": [schema, {"type": "null"}]} if nullable else schema


def _object(members: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": members,
        "required": list(members),
        "additionalProperties": False,
    }


_HEX64: Final = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_FINGERPRINT: Final = _object(
    {
        "format": {"const": "detserve-environment"},
        "format_version": {"type": "integer", "const": 1},
        "host": _object(
            {
                **{
                    name: _text(512)
                    for name in (
                        "os",
                        "kernel",
                        "machine",
                        "docker_engine_version",
                        "docker_api_version",
                    )
                },
                **{
                    name: _text(512, True)
                    for name in ("cpu_model", "gpu_driver_version", "cuda_version", "gpu_reason")
                },
                "cpu_flags": {"type": "array", "maxItems": 1024, "items": _text(64)},
                "cpu_count": _count(),
                "memory_bytes": _count(),
                "gpus": {
                    "anyOf": [
                        {"type": "null"},
                        {
                            "type": "array",
                            "maxItems": 1024,
                            "items": _object({"name": _text(512), "memory_mib": _count()}),
                        },
                    ]
                },
            }
        ),
        "container": _object(
            {
                "image": _text(512),
                "image_id": _text(128),
                **{
                    name: _text(512, True)
                    for name in ("python_version", "vllm_version", "torch_version")
                },
                "numerics_environment": {
                    "type": "object",
                    "maxProperties": 256,
                    "propertyNames": {"maxLength": 128},
                    "additionalProperties": _text(4096),
                },
            }
        ),
    }
)


def statement_validator() -> Validator:
    """Section 9.3 and 9.4 as a schema, the pins and sampling by the run-log schema's own."""
    schema = _object(
        {
            "_type": {"const": "https://in-toto.io/Statement/v1"},
            "subject": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": _object(
                    {
                        "name": {"type": "string", "minLength": 1, "maxLength": 4096},
                        "digest": _object({"sha256": _HEX64}),
                    }
                ),
            },
            "predicateType": {"const": "https://detserve.invalid/attestation/run-log/v1"},
            "predicate": _object(
                {
                    "pins": {"$ref": "#/$defs/RunPins"},
                    "sampling": {"$ref": "#/$defs/SamplingParams"},
                    "n_samples": {"type": "integer", "minimum": 1},
                    "detserve_version": {"type": "string", "minLength": 1, "maxLength": 64},
                    "environment": _FINGERPRINT,
                    "environment_sha256": _HEX64,
                    "sidecar_sha256": _HEX64,
                }
            ),
        }
    )
    schema["$defs"] = copy.deepcopy(validator().root["$defs"])
    return Validator(schema)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_claim(envelope: Path, public_key: Path, run_log: Path) -> str:
    """Section 9.6, in its order; the key id of the key that verified, or :class:`Refused`."""
    try:
        key = load_public_key(_read(public_key, "key"))
    except KeyRefused as exc:
        raise Refused(exc.rule, f"{public_key}: {exc}") from None
    payload, payload_type, signatures = parse_envelope(_read(envelope, "envelope"), str(envelope))
    message = pae(payload_type, payload)
    if not any(key.verifies(signature, message) for signature in signatures):
        raise Refused(
            "envelope.signature",
            f"{envelope}: no signature verifies with the key",
            "bad-signature",
            1,
        )
    claim = ("not-a-claim", 1)
    if payload_type != PAYLOAD_TYPE:
        raise Refused("statement.type", f"payload type {payload_type!r}", *claim)
    try:
        statement = read_ijson(payload, "the statement")
    except ValueError as exc:
        raise Refused("statement.json", str(exc), *claim) from None
    if not isinstance(statement, dict):
        raise Refused("statement.json", "the statement is not an object", *claim)
    try:
        statement = statement_validator().validate(statement)
    except SchemaError as exc:
        raise Refused("statement.shape", str(exc), *claim) from None
    subject = statement["subject"][0]["digest"]["sha256"]
    if subject != _file_sha256(run_log):
        raise Refused("claim.subject", f"the subject is not {run_log}", "subject-mismatch", 1)
    header = verify_run_log(run_log).header
    predicate = statement["predicate"]
    differences = [
        f"{part}.{name}"
        for part in ("pins", "sampling")
        for name in sorted(set(predicate[part]) | set(header[part]))
        if predicate[part].get(name) != header[part].get(name)
    ]
    if predicate["n_samples"] != header["n_samples"]:
        differences.append("n_samples")
    fingerprint = rfc8785.dumps(predicate["environment"]) + b"\n"
    if hashlib.sha256(fingerprint).hexdigest() != predicate["environment_sha256"]:
        differences.append("environment_sha256")
    if differences:
        raise Refused(
            "claim.pins", f"the predicate differs: {', '.join(differences)}", "pin-mismatch", 1
        )
    return key.keyid
