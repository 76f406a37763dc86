"""Attestation test vectors (docs/spec/run-log.md section 9): keys, DSSE envelopes and in-toto
statements about a run log, valid and near-misses, with their verdicts.

The keys are derived from fixed seeds and signatures are deterministic (Ed25519 is; ECDSA is
signed as RFC 6979 says), so the vectors regenerate byte for byte. The signing goes through
``cryptography``; nothing here imports detserve.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from spec_vectors_base import VectorSet, jcs, line, replace_once, sha, valid_run_log
from spec_vectors_statements import add_statements, statement

PAYLOAD_TYPE: Final = "application/vnd.in-toto+json"
_P: Final = 2**255 - 19
_P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

Signer = Callable[[bytes], bytes]


def _ed25519(name: str) -> ed25519.Ed25519PrivateKey:
    seed = hashlib.sha256(f"detserve spec vectors: {name}".encode()).digest()
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


def _p256(name: str) -> ec.EllipticCurvePrivateKey:
    digest = hashlib.sha256(f"detserve spec vectors: {name}".encode()).digest()
    return ec.derive_private_key(
        int.from_bytes(digest, "big") % (_P256_ORDER - 1) + 1, ec.SECP256R1()
    )


def _olpc(value: Any) -> str:
    """securesystemslib's canonical JSON of strings and objects: only ``"`` and ``\\`` escaped."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    items = sorted(value.items())
    return "{" + ",".join(f"{_olpc(k)}:{_olpc(v)}" for k, v in items) + "}"


def keyid_ed25519(key: ed25519.Ed25519PublicKey) -> str:
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    return sha(_olpc({"keytype": "ed25519", "keyval": {"public": raw}, "scheme": "ed25519"}))


def keyid_p256(key: ec.EllipticCurvePublicKey) -> str:
    pem = key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    document = {"keytype": "ecdsa", "keyval": {"public": pem}, "scheme": "ecdsa-sha2-nistp256"}
    return sha(_olpc(document))


def pem(der: bytes, label: str = "PUBLIC KEY", width: int = 64) -> bytes:
    text = base64.b64encode(der).decode()
    body = "\n".join(text[i : i + width] for i in range(0, len(text), width))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n".encode()


def pae(payload_type: str, payload: bytes) -> bytes:
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def envelope(
    payload: bytes, signatures: list[tuple[str, bytes]], payload_type: str = PAYLOAD_TYPE
) -> bytes:
    return line(
        {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": payload_type,
            "signatures": [
                {"keyid": k, "sig": base64.b64encode(s).decode()} for k, s in signatures
            ],
        }
    )


def add_claims(vs: VectorSet) -> None:
    ed, other, p256 = _ed25519("ed25519"), _ed25519("other"), _p256("p256")
    ed_id, other_id = keyid_ed25519(ed.public_key()), keyid_ed25519(other.public_key())
    p256_id = keyid_p256(p256.public_key())
    ed_der = ed.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    p256_der = p256.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    keys = {
        "ed25519": vs.file("claim/keys/ed25519.pub", pem(ed_der)),
        "p256": vs.file("claim/keys/p256.pub", pem(p256_der)),
    }
    point = p256.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    compressed = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200") + point
    keys["p256-compressed"] = vs.file("claim/keys/p256-compressed.pub", pem(compressed))
    keys["no-final-newline"] = vs.file("claim/keys/no-final-newline.pub", pem(ed_der)[:-1])
    keys["crlf"] = vs.file("claim/keys/crlf.pub", pem(ed_der).replace(b"\n", b"\r\n"))
    keys["two-blocks"] = vs.file("claim/keys/two-blocks.pub", pem(ed_der) + pem(ed_der))
    keys["short-lines"] = vs.file("claim/keys/short-lines.pub", pem(p256_der, width=60))
    ed_prefix = bytes.fromhex("302a300506032b6570032100")
    order_two = bytes.fromhex("ec" + "ff" * 30 + "7f")  # (0, -1): order 2
    keys["small-order"] = vs.file("claim/keys/small-order.pub", pem(ed_prefix + order_two))
    raw = ed.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    y, sign = int.from_bytes(raw, "little") & (2**255 - 1), raw[31] >> 7
    mixed = ((_P - y) | ((1 - sign) << 255)).to_bytes(32, "little")  # A + (0, -1): order 2L
    keys["mixed-order"] = vs.file("claim/keys/mixed-order.pub", pem(ed_prefix + mixed))
    x25519 = bytes.fromhex("302a300506032b656e032100") + raw
    keys["x25519"] = vs.file("claim/keys/x25519.pub", pem(x25519))

    run = b"".join(valid_run_log(4, logprobs=True))
    logs = {
        "run": vs.file("claim/run.runlog.jsonl", run),
        "other": vs.file("claim/other.runlog.jsonl", b"".join(valid_run_log(4, seed=7))),
    }
    broken = run.replace(b'"output_token_ids":[37,', b'"output_token_ids":[38,', 1)
    logs["invalid"] = vs.file("claim/invalid.runlog.jsonl", broken)

    def sign_ed(
        key: ed25519.Ed25519PrivateKey, keyid: str
    ) -> Callable[[bytes, str], tuple[str, bytes]]:
        return lambda payload, kind: (keyid, key.sign(pae(kind, payload)))

    by_ed, by_other = sign_ed(ed, ed_id), sign_ed(other, other_id)

    def by_p256(payload: bytes, kind: str) -> tuple[str, bytes]:
        ecdsa = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
        return p256_id, p256.sign(pae(kind, payload), ecdsa)

    def add(
        name: str,
        data: bytes,
        verdict: str,
        code: int,
        rule: str | None,
        section: str,
        what: str,
        *,
        key: str = "ed25519",
        log: str = "run",
        keyid: str | None = None,
    ) -> None:
        files = {
            "envelope": vs.file(f"claim/{name}.intoto.json", data),
            "public_key": keys[key],
            "run_log": logs[log],
        }
        vs.add(
            f"claim/{name}",
            "claim",
            files,
            verdict=verdict,
            exit_code=code,
            rule=rule,
            section=section,
            description=what,
            keyid=keyid,
        )

    payload = jcs(statement(run))

    def signed(
        body: bytes, *signers: Callable[[bytes, str], tuple[str, bytes]], kind: str = PAYLOAD_TYPE
    ) -> bytes:
        return envelope(body, [s(body, kind) for s in signers], kind)

    good = signed(payload, by_ed)
    add("valid-ed25519", good, "verified", 0, None, "9.6", "signed with Ed25519", keyid=ed_id)
    add(
        "valid-p256",
        signed(payload, by_p256),
        "verified",
        0,
        None,
        "9.6",
        "signed with ECDSA P-256 (RFC 6979 nonces)",
        key="p256",
        keyid=p256_id,
    )
    add(
        "valid-p256-compressed-key",
        signed(payload, by_p256),
        "verified",
        0,
        None,
        "9.1",
        "the P-256 key file holds a compressed point; the key id is the uncompressed PEM's",
        key="p256-compressed",
        keyid=p256_id,
    )
    add(
        "valid-empty-keyid",
        envelope(payload, [("", by_ed(payload, PAYLOAD_TYPE)[1])]),
        "verified",
        0,
        None,
        "9.2",
        "an empty key id, as cosign writes",
        keyid=ed_id,
    )
    add(
        "valid-second-signature",
        signed(payload, by_other, by_ed),
        "verified",
        0,
        None,
        "9.2",
        "another key's signature first, then the trusted key's",
        keyid=ed_id,
    )
    add(
        "valid-key-no-final-newline",
        good,
        "verified",
        0,
        None,
        "9.1",
        "a key file without its final LF",
        key="no-final-newline",
        keyid=ed_id,
    )
    pretty = json.dumps(statement(run), indent=2).encode()
    add(
        "valid-statement-not-canonical",
        signed(pretty, by_ed),
        "verified",
        0,
        None,
        "9.3",
        "a statement pretty-printed: the payload need not be canonical",
        keyid=ed_id,
    )

    bad_sig = ("bad-signature", 1, "envelope.signature", "9.2")
    add("wrong-key", signed(payload, by_other), *bad_sig, "signed by another key")
    add(
        "keyid-lies",
        envelope(payload, [(ed_id, by_other(payload, PAYLOAD_TYPE)[1])]),
        *bad_sig,
        "another key's signature under the trusted key's id",
    )
    add("no-signature", envelope(payload, []), *bad_sig, "no signature at all")
    changed = replace_once(payload, b'"0.1.0"', b'"0.1.1"')
    add(
        "payload-changed",
        envelope(changed, [by_ed(payload, PAYLOAD_TYPE)]),
        *bad_sig,
        "one byte of the payload changed after signing",
    )
    add(
        "payload-type-changed",
        envelope(payload, [by_ed(payload, PAYLOAD_TYPE)], "application/json"),
        *bad_sig,
        "the payload type changed after signing",
    )
    add(
        "bad-signature-before-statement",
        signed(b"not a claim", by_other),
        *bad_sig,
        "another key signed something that is not a claim: the signature is checked first",
    )

    bad = ("invalid", 2)
    add(
        "envelope-extra-member",
        replace_once(good, b'{"payload"', b'{"note":"x","payload"'),
        *bad,
        "envelope.shape",
        "9.2",
        "a member DSSE does not define",
    )
    add("envelope-bom", b"\xef\xbb\xbf" + good, *bad, "envelope.json", "9.2", "a byte-order mark")
    add(
        "envelope-duplicate-key",
        replace_once(good, b'"payloadType"', b'"payloadType":"x","payloadType"'),
        *bad,
        "envelope.json",
        "9.2",
        "payloadType twice",
    )
    add("envelope-not-object", b"[]\n", *bad, "envelope.shape", "9.2", "an array")
    encoded = base64.b64encode(payload)
    add(
        "payload-line-break",
        replace_once(good, encoded, encoded[:76] + b"\\n" + encoded[76:]),
        *bad,
        "envelope.shape",
        "9.2",
        "MIME-style base64 with a line break in the payload",
    )
    add(
        "signature-not-base64",
        envelope(payload, [(ed_id, b"")]).replace(b'"sig":""', b'"sig":"!!!!"'),
        *bad,
        "envelope.shape",
        "9.2",
        "a signature '!!!!'",
    )
    add(
        "duplicate-keyid",
        envelope(payload, [by_ed(payload, PAYLOAD_TYPE)] * 2),
        *bad,
        "envelope.shape",
        "9.2",
        "two signatures with one key id",
    )
    many = [(f"k{i:02d}", by_other(payload, PAYLOAD_TYPE)[1]) for i in range(16)]
    add(
        "seventeen-signatures",
        envelope(payload, [*many, by_ed(payload, PAYLOAD_TYPE)]),
        *bad,
        "envelope.shape",
        "9.2",
        "17 signatures, the last one good",
    )
    for name, what in (
        ("crlf", "CR LF line ends"),
        ("two-blocks", "two PEM blocks"),
        ("short-lines", "base64 lines of 60 characters"),
    ):
        add(f"key-{name}", good, *bad, "key.pem", "9.1", f"a public key file with {what}", key=name)
    for name, what in (
        ("small-order", "the Ed25519 point (0, -1), of order 2"),
        ("mixed-order", "the trusted key plus (0, -1): order 2L, outside the prime-order subgroup"),
        ("x25519", "an X25519 key"),
    ):
        add(f"key-{name}", good, *bad, "key.type", "9.1", f"a public key: {what}", key=name)
    add_statements(vs, add, run, signed, by_ed)
