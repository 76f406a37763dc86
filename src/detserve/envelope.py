"""DSSE envelopes, read strictly and verified in linear time.

A signed claim (:mod:`detserve.attestation`) and a concurrency certificate
(:mod:`detserve.certificate`) are each a DSSE v1 envelope: ``{payload, payloadType,
signatures: [{keyid, sig}]}``, every signature over DSSE's pre-authentication encoding (PAE) of
the payload and its type. Signing goes through securesystemslib (its ``Envelope``, its signers);
verification is detserve's, with ``cryptography``, so that it takes one signature check per
signature and reports who signed by the key that verified.

Invariants:

* An envelope is read as every document of evidence is (:mod:`detserve.strict_json`: I-JSON,
  exit 2 otherwise).
* An envelope has exactly DSSE's fields, at most :data:`MAX_SIGNATURES` signatures with
  distinct key ids, every value of its type and every base64 strict; otherwise it is bad input
  (exit 2), never a verdict.
* :func:`verify_envelope` checks the given key against each signature once (linear in the
  signatures, whatever their key ids: a key id is a hint no signature covers, and cosign writes
  an empty one) and returns the key id computed from the key that verified; it raises
  :class:`SignatureError` (exit 1) when none does. Nothing in the payload is read before.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Final

import securesystemslib.exceptions
from securesystemslib.dsse import Envelope

# securesystemslib.signer's public names, re-exported without __all__ (mypy's strict view).
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]

from detserve.canonical import canonical_bytes
from detserve.errors import InputError, VerificationError, bounded
from detserve.keys import AttestationKeyError, PublicKey, signer_public_key
from detserve.strict_json import read_json_object

#: The most signatures an envelope may carry: detserve writes one; DSSE's threshold use is a few.
MAX_SIGNATURES: Final = 16


class SignatureError(VerificationError):
    """The envelope carries no signature the given public key verifies (exit 1)."""

    kind = "bad-signature"


# --- envelopes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedEnvelope:
    """A DSSE envelope of strictly DSSE's shape; nothing in it is trusted yet."""

    payload: bytes
    payload_type: str
    #: (key id as written, signature bytes), in the envelope's order
    signatures: tuple[tuple[str, bytes], ...]

    def pae(self) -> bytes:
        """DSSE v1's pre-authentication encoding: what every signature is over."""
        kind = self.payload_type.encode("utf-8")
        return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(self.payload), self.payload)


def _b64(value: object, what: str, source: str) -> bytes:
    if not isinstance(value, str):
        raise InputError(f"{source}: {what} is not a base64 string")
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"{source}: {what} is not base64") from exc
    if base64.b64encode(decoded).decode("ascii") != value:
        # pad bits set: the same bytes in another spelling, so one signature would verify
        # several files (RFC 4648 3.5 lets a decoder refuse them; this one does)
        raise InputError(f"{source}: {what} is not base64 in its one spelling (pad bits set)")
    return decoded


def parse_envelope(data: bytes, source: str) -> ParsedEnvelope:
    """A DSSE envelope of strictly the DSSE shape; :class:`InputError` (exit 2) otherwise."""
    shown = bounded(source)
    document = read_json_object(data, source)
    expected = {"payload", "payloadType", "signatures"}
    if set(document) != expected:
        raise InputError(
            f"{shown}: not a DSSE envelope",
            details=[
                *(f"missing: {name}" for name in sorted(expected - set(document))),
                *(f"extra: {bounded(name, 100)}" for name in sorted(set(document) - expected)),
            ],
        )
    payload = _b64(document["payload"], "payload", shown)
    payload_type = document["payloadType"]
    if not isinstance(payload_type, str):
        raise InputError(f"{shown}: payloadType is not a string")
    entries = document["signatures"]
    if not isinstance(entries, list):
        raise InputError(f"{shown}: signatures is not a list")
    if len(entries) > MAX_SIGNATURES:
        raise InputError(
            f"{shown}: {len(entries)} signatures; an envelope may carry at most {MAX_SIGNATURES}"
        )
    signatures: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"keyid", "sig"}:
            raise InputError(f"{shown}: signature {index} is not {{keyid, sig}}")
        keyid = entry["keyid"]
        if not isinstance(keyid, str):
            raise InputError(f"{shown}: signature {index}: keyid is not a string")
        if keyid in seen:
            # Which of two same-id signatures counts would be the parser's choice.
            raise InputError(f"{shown}: two signatures with key id {bounded(keyid, 100)!r}")
        seen.add(keyid)
        signatures.append((keyid, _b64(entry["sig"], f"signature {index}", shown)))
    return ParsedEnvelope(payload, payload_type, tuple(signatures))


def sign_envelope(payload: bytes, payload_type: str, signer: CryptoSigner | None) -> bytes:
    """The canonical JSON bytes of a DSSE envelope of ``payload``, signed by ``signer`` (no
    signature without one); a signature is checked with the signer's public key before it is
    returned."""
    envelope = Envelope(payload, payload_type, {})
    if signer is not None:
        try:
            envelope.sign(signer)
        except securesystemslib.exceptions.Error as exc:
            raise AttestationKeyError(f"cannot sign: {type(exc).__name__}") from exc
    data = canonical_bytes(envelope.to_dict())
    if signer is not None:
        verify_envelope(parse_envelope(data, "the new envelope"), signer_public_key(signer))
    return data


def verify_envelope(envelope: ParsedEnvelope, key: PublicKey) -> str:
    """The id of ``key`` when it verifies a signature of ``envelope``; :class:`SignatureError`
    otherwise. One check per signature, whatever key ids they carry."""
    if not envelope.signatures:
        raise SignatureError("the envelope carries no signature")
    pae = envelope.pae()
    if any(key.verifies(signature, pae) for _, signature in envelope.signatures):
        return key.keyid
    raise SignatureError(
        "the envelope's signature does not verify with the given public key",
        # The envelope's key ids are not shown: no signature covers them.
        details=[
            f"public key: {key.algorithm}, key id {key.keyid}",
            f"signatures tried: {len(envelope.signatures)}",
        ],
        hint="the envelope was changed after signing, or another key signed it; trust nothing "
        "in it",
    )
