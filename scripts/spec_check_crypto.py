"""Public keys and signatures as docs/spec/run-log.md section 9 names them, in pure Python; part
of the independent checker (``scripts/spec_check.py``).

Ed25519 verification follows RFC 8032 section 5.1.7 (cofactorless, R compared by encoding);
ECDSA P-256 follows FIPS 186-5 with SHA-256 over a strict-DER signature. Slow and not
constant-time: it verifies public data (test vectors), it never signs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Final

# --- Ed25519 (RFC 8032) ------------------------------------------------------------------------

P: Final = 2**255 - 19
L: Final = 2**252 + 27742317777372353535851937790883648493
D: Final = (-121665 * pow(121666, -1, P)) % P
SQRT_M1: Final = pow(2, (P - 1) // 4, P)

Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T)
IDENTITY: Final[Point] = (0, 1, 1, 0)


def _add(a: Point, b: Point) -> Point:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    pa = (y1 - x1) * (y2 - x2) % P
    pb = (y1 + x1) * (y2 + x2) % P
    pc = 2 * t1 * t2 * D % P
    pd = 2 * z1 * z2 % P
    e, f, g, h = pb - pa, pd - pc, pd + pc, pb + pa
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(scalar: int, point: Point) -> Point:
    result = IDENTITY
    while scalar:
        if scalar & 1:
            result = _add(result, point)
        point = _add(point, point)
        scalar >>= 1
    return result


def _equal(a: Point, b: Point) -> bool:
    return (a[0] * b[2] - b[0] * a[2]) % P == 0 and (a[1] * b[2] - b[1] * a[2]) % P == 0


def _encode(point: Point) -> bytes:
    zinv = pow(point[2], -1, P)
    x, y = point[0] * zinv % P, point[1] * zinv % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _decode(data: bytes) -> Point | None:
    """RFC 8032 section 5.1.3; None for a non-canonical encoding or a point off the curve."""
    if len(data) != 32:
        return None
    number = int.from_bytes(data, "little")
    y, sign = number & (2**255 - 1), number >> 255
    if y >= P:
        return None
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if (v * x * x - u) % P != 0:
        x = x * SQRT_M1 % P
        if (v * x * x - u) % P != 0:
            return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


_BY: Final = 4 * pow(5, -1, P) % P
BASE: Final = _decode(_BY.to_bytes(32, "little"))


def ed25519_key_valid(raw: bytes) -> bool:
    """Section 9.1: canonical, on the curve, not of small order, in the prime-order subgroup."""
    point = _decode(raw)
    if point is None or _encode(point) != raw:
        return False
    return not _equal(_mul(8, point), IDENTITY) and _equal(_mul(L, point), IDENTITY)


def ed25519_verify(raw: bytes, signature: bytes, message: bytes) -> bool:
    assert BASE is not None
    key = _decode(raw)
    if key is None or len(signature) != 64:
        return False
    r_bytes, s = signature[:32], int.from_bytes(signature[32:], "little")
    if s >= L or _decode(r_bytes) is None:
        return False
    k = int.from_bytes(hashlib.sha512(r_bytes + raw + message).digest(), "little") % L
    minus_ka = _mul(k, (P - key[0], key[1], key[2], P - key[3]))
    return _encode(_add(_mul(s, BASE), minus_ka)) == r_bytes


# --- ECDSA P-256 (FIPS 186-5, SEC 1) ------------------------------------------------------------

EC_P: Final = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
EC_B: Final = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
EC_N: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
EC_G: Final = (
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
)
Affine = tuple[int, int] | None


def _ec_add(a: Affine, b: Affine) -> Affine:
    if a is None:
        return b
    if b is None:
        return a
    if a[0] == b[0] and (a[1] + b[1]) % EC_P == 0:
        return None
    if a == b:
        slope = (3 * a[0] * a[0] - 3) * pow(2 * a[1], -1, EC_P) % EC_P
    else:
        slope = (b[1] - a[1]) * pow(b[0] - a[0], -1, EC_P) % EC_P
    x = (slope * slope - a[0] - b[0]) % EC_P
    return (x, (slope * (a[0] - x) - a[1]) % EC_P)


def _ec_mul(scalar: int, point: Affine) -> Affine:
    result: Affine = None
    while scalar:
        if scalar & 1:
            result = _ec_add(result, point)
        point = _ec_add(point, point)
        scalar >>= 1
    return result


def p256_point(data: bytes) -> tuple[int, int] | None:
    """A SEC 1 point (uncompressed or compressed) on P-256, not the point at infinity."""
    if len(data) == 65 and data[0] == 4:
        x, y = int.from_bytes(data[1:33], "big"), int.from_bytes(data[33:], "big")
    elif len(data) == 33 and data[0] in (2, 3):
        x = int.from_bytes(data[1:], "big")
        rhs = (x * x * x - 3 * x + EC_B) % EC_P
        y = pow(rhs, (EC_P + 1) // 4, EC_P)
        if y & 1 != data[0] & 1:
            y = EC_P - y
    else:
        return None
    if x >= EC_P or y >= EC_P or (y * y - (x * x * x - 3 * x + EC_B)) % EC_P != 0:
        return None
    return (x, y)


def _der_integer(data: bytes, at: int) -> tuple[int, int] | None:
    if at + 2 > len(data) or data[at] != 0x02 or data[at + 1] >= 0x80:
        return None
    length = data[at + 1]
    body = data[at + 2 : at + 2 + length]
    if length == 0 or len(body) != length or body[0] & 0x80:
        return None
    if length > 1 and body[0] == 0 and not body[1] & 0x80:
        return None  # not minimal
    return int.from_bytes(body, "big"), at + 2 + length


def p256_verify(point: tuple[int, int], signature: bytes, message: bytes) -> bool:
    if len(signature) < 8 or signature[0] != 0x30 or signature[1] != len(signature) - 2:
        return False
    first = _der_integer(signature, 2)
    if first is None:
        return False
    second = _der_integer(signature, first[1])
    if second is None or second[1] != len(signature):
        return False
    r, s = first[0], second[0]
    if not (0 < r < EC_N and 0 < s < EC_N):
        return False
    e = int.from_bytes(hashlib.sha256(message).digest(), "big")
    w = pow(s, -1, EC_N)
    total = _ec_add(_ec_mul(e * w % EC_N, EC_G), _ec_mul(r * w % EC_N, point))
    return total is not None and total[0] % EC_N == r


# --- key files (section 9.1) -------------------------------------------------------------------

ED25519_SPKI: Final = bytes.fromhex("302a300506032b6570032100")
P256_ALGORITHM: Final = bytes.fromhex("301306072a8648ce3d020106082a8648ce3d030107")


class KeyRefused(ValueError):
    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


@dataclass(frozen=True)
class PublicKey:
    algorithm: str  # "ed25519" or "ecdsa-p256"
    raw: bytes  # the Ed25519 point, or the uncompressed SEC 1 P-256 point
    keyid: str

    def verifies(self, signature: bytes, message: bytes) -> bool:
        if self.algorithm == "ed25519":
            return ed25519_verify(self.raw, signature, message)
        point = p256_point(self.raw)
        return point is not None and p256_verify(point, signature, message)


def _pem_body(data: bytes) -> bytes:
    """[key.pem]: the DER of the one strict PUBLIC KEY block that is the whole file."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyRefused("key.pem", "not ASCII") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if (
        len(lines) < 3
        or lines[0] != "-----BEGIN PUBLIC KEY-----"
        or lines[-1] != "-----END PUBLIC KEY-----"
    ):
        raise KeyRefused("key.pem", "not one PUBLIC KEY block alone")
    body = lines[1:-1]
    if any(len(line) != 64 for line in body[:-1]) or not 0 < len(body[-1]) <= 64:
        raise KeyRefused("key.pem", "base64 lines not of 64 characters")
    try:
        return base64.b64decode("".join(body), validate=True)
    except (binascii.Error, ValueError):
        raise KeyRefused("key.pem", "the block is not base64") from None


def _olpc(value: dict[str, object] | str) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "{" + ",".join(f"{_olpc(k)}:{_olpc(v)}" for k, v in sorted(value.items())) + "}"  # type: ignore[arg-type]


def _keyid(keytype: str, scheme: str, public: str) -> str:
    text = _olpc({"keytype": keytype, "keyval": {"public": public}, "scheme": scheme})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_public_key(data: bytes) -> PublicKey:
    """[key.pem] and [key.type]; the key id of section 9.1."""
    der = _pem_body(data)
    if len(der) == 44 and der.startswith(ED25519_SPKI):
        raw = der[len(ED25519_SPKI) :]
        if not ed25519_key_valid(raw):
            raise KeyRefused("key.type", "not a point of Ed25519's prime-order subgroup")
        return PublicKey("ed25519", raw, _keyid("ed25519", "ed25519", raw.hex()))
    # SEQUENCE { AlgorithmIdentifier (id-ecPublicKey, prime256v1), BIT STRING (0 unused) }
    if (
        len(der) >= 2 + len(P256_ALGORITHM) + 3
        and der[0] == 0x30
        and der[1] == len(der) - 2
        and der[2 : 2 + len(P256_ALGORITHM)] == P256_ALGORITHM
    ):
        rest = der[2 + len(P256_ALGORITHM) :]
        if rest[0] == 0x03 and rest[1] == len(rest) - 2 and rest[2] == 0:
            point = p256_point(rest[3:])
            if point is None:
                raise KeyRefused("key.type", "not a point of P-256")
            uncompressed = b"\x04" + point[0].to_bytes(32, "big") + point[1].to_bytes(32, "big")
            spki = bytes.fromhex("3059") + P256_ALGORITHM + b"\x03\x42\x00" + uncompressed
            text = base64.b64encode(spki).decode()
            pem = (
                "-----BEGIN PUBLIC KEY-----\n"
                + "".join(text[i : i + 64] + "\n" for i in range(0, len(text), 64))
                + "-----END PUBLIC KEY-----\n"
            )
            return PublicKey(
                "ecdsa-p256", uncompressed, _keyid("ecdsa", "ecdsa-sha2-nistp256", pem)
            )
    raise KeyRefused("key.type", "neither an Ed25519 nor an ECDSA P-256 SubjectPublicKeyInfo")
