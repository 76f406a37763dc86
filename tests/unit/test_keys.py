"""Keys and envelopes read as strictly as their standards: each loose reading, refused.

Every case goes through ``verify-claim``, ``attest`` or ``keygen`` on a genuine claim and
checks the exit code and what is named. The Ed25519 points are computed here, by the curve's own
arithmetic (RFC 8032, section 5.1), independently of libsodium, which detserve asks.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any, Final

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from detserve import envelope as envelope_module
from detserve.envelope import MAX_SIGNATURES
from detserve.keys import PublicKey, load_public_key

from .committed import CliRunner
from .test_attest import Claim, envelope_document, keygen, make_claim, write_envelope

# --- the edwards25519 curve (RFC 8032, section 5.1), for the test's own points -------------------

P = 2**255 - 19
D = -121665 * pow(121666, -1, P) % P
L = 2**252 + 27742317777372353535851937790883648493
SQRT_M1 = pow(2, (P - 1) // 4, P)
Point = tuple[int, int]


def _add(a: Point, b: Point) -> Point:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return (
        (x1 * y2 + x2 * y1) * pow(1 + t, -1, P) % P,
        (y1 * y2 + x1 * x2) * pow(1 - t, -1, P) % P,
    )


def _times(k: int, point: Point) -> Point:
    result: Point = (0, 1)
    while k:
        if k & 1:
            result = _add(result, point)
        point = _add(point, point)
        k >>= 1
    return result


def _x_of(y: int) -> int | None:
    """An x with (x, y) on the curve, or None when y is on no point."""
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if v * x * x % P == (-u) % P:
        x = x * SQRT_M1 % P
    return x if v * x * x % P == u % P else None


def _encode(point: Point) -> bytes:
    x, y = point
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _small_order_points() -> list[Point]:
    """The 8 points of order dividing 8: the multiples of one of order 8."""
    y = 2
    while True:
        x = _x_of(y)
        if x is not None:
            torsion = _times(L, (x, y))  # the point's component outside the prime-order group
            if _times(4, torsion) != (0, 1):
                return [_times(k, torsion) for k in range(8)]
        y += 1


SMALL_ORDER = _small_order_points()
#: x = 0 written with the sign bit set, and y + p for y < 19: encodings RFC 8032 calls invalid
NON_CANONICAL = [
    (1 | 1 << 255).to_bytes(32, "little"),  # the identity, "negative" x = 0
    ((P - 1) | 1 << 255).to_bytes(32, "little"),  # the point of order 2, likewise
    (P + 1).to_bytes(32, "little"),  # the identity's y + p
    P.to_bytes(32, "little"),  # y = 0 (order 4) as p
]


def _off_curve() -> bytes:
    y = 2
    while _x_of(y) is not None:
        y += 1
    return y.to_bytes(32, "little")


def _ed25519_pem(raw: bytes) -> bytes:
    body = base64.b64encode(bytes.fromhex("302a300506032b6570032100") + raw).decode()
    return f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n".encode()


def test_the_points_of_the_test_are_what_they_say() -> None:
    encodings = {_encode(point) for point in SMALL_ORDER}
    assert len(encodings) == 8
    assert bytes([1]) + bytes(31) in encodings  # the identity
    assert bytes(32) in encodings  # y = 0, of order 4
    assert all(_times(8, point) == (0, 1) for point in SMALL_ORDER)


@pytest.fixture
def ed_claim(tmp_path: Path, cli: CliRunner) -> Claim:
    return make_claim(tmp_path, cli, "ed25519")


@pytest.fixture
def ec_claim(tmp_path: Path, cli: CliRunner) -> Claim:
    return make_claim(tmp_path, cli, "ecdsa-p256")


# --- small-order and invalid public keys: exit 2 ------------------------------------------------


def test_the_identity_key_would_verify_a_signature_nobody_made(
    ed_claim: Claim, cli: CliRunner, tmp_path: Path
) -> None:
    # Why it matters: with the identity as the key, R = identity and S = 0 is a valid Ed25519
    # signature of every message (cryptography accepts it), so whoever publishes that key can
    # disown any claim "signed" by it. detserve refuses the key itself.
    identity = bytes([1]) + bytes(31)
    forged = bytes([1]) + bytes(63)
    document = envelope_document(ed_claim)
    document["signatures"] = [{"keyid": "", "sig": base64.b64encode(forged).decode()}]
    write_envelope(ed_claim, document)
    ed25519.Ed25519PublicKey.from_public_bytes(identity).verify(
        forged, envelope_module.parse_envelope(ed_claim.envelope.read_bytes(), "e").pae()
    )  # the library alone: it verifies
    key = tmp_path / "identity.pub"
    key.write_bytes(_ed25519_pem(identity))
    ran = cli(*ed_claim.verify_args(public_key=key))
    assert ran.code == 2, ran
    assert "not a valid Ed25519 public key" in ran.err
    assert "VERIFIED" not in ran.out


@pytest.mark.parametrize(
    "raw",
    [
        *(_encode(point) for point in SMALL_ORDER),
        *NON_CANONICAL,
        _off_curve(),
    ],
    ids=[
        *(f"small-order-{k}" for k in range(8)),
        "neg-zero-identity",
        "neg-zero-order-2",
        "identity-plus-p",
        "zero-plus-p",
        "off-curve",
    ],
)
def test_a_small_order_or_invalid_ed25519_key_is_refused(
    ed_claim: Claim, cli: CliRunner, tmp_path: Path, raw: bytes
) -> None:
    key = tmp_path / "bad.pub"
    key.write_bytes(_ed25519_pem(raw))
    ran = cli(*ed_claim.verify_args(public_key=key), "--json")
    assert ran.code == 2, ran
    assert "not a valid Ed25519 public key" in ran.err
    assert json.loads(ran.out)["error"] == "bad-key"


def test_a_key_with_a_small_order_component_is_refused(
    ed_claim: Claim, cli: CliRunner, tmp_path: Path
) -> None:
    genuine = load_public_key(ed_claim.public_key)
    assert isinstance(genuine.crypto, ed25519.Ed25519PublicKey)
    raw = genuine.crypto.public_bytes_raw()
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    x = _x_of(y)
    assert x is not None
    if (x & 1) != raw[31] >> 7:
        x = P - x
    mixed = _add((x, y), SMALL_ORDER[1])  # the key plus a point of order 8
    key = tmp_path / "mixed.pub"
    key.write_bytes(_ed25519_pem(_encode(mixed)))
    ran = cli(*ed_claim.verify_args(public_key=key))
    assert ran.code == 2, ran
    assert "not a valid Ed25519 public key" in ran.err


def test_an_ec_point_off_the_curve_is_refused(
    ec_claim: Claim, cli: CliRunner, tmp_path: Path
) -> None:
    genuine = load_public_key(ec_claim.public_key)
    der = bytearray(genuine.crypto.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
    der[-1] ^= 1  # y + 1 (or - 1): no longer on P-256
    key = tmp_path / "off-curve.pub"
    body = base64.b64encode(bytes(der)).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    key.write_text(
        "-----BEGIN PUBLIC KEY-----\n" + "\n".join(lines) + "\n-----END PUBLIC KEY-----\n"
    )
    ran = cli(*ec_claim.verify_args(public_key=key))
    assert ran.code == 2, ran
    assert "not a valid public key" in ran.err


def test_a_p384_key_is_refused(ec_claim: Claim, cli: CliRunner, tmp_path: Path) -> None:
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    key = tmp_path / "p384.pub"
    key.write_bytes(other.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    ran = cli(*ec_claim.verify_args(public_key=key))
    assert ran.code == 2, ran
    assert "Ed25519 or ECDSA P-256 only" in ran.err


# --- who signed: the verifying key's id ---------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256"])
def test_the_signer_reported_is_the_verifying_keys_id_never_the_envelopes(
    tmp_path: Path, cli: CliRunner, algorithm: str
) -> None:
    claim = make_claim(tmp_path, cli, algorithm)
    expected = load_public_key(claim.public_key).keyid
    document = envelope_document(claim)
    document["signatures"][0]["keyid"] = "operator-of-record-" + "f" * 40
    write_envelope(claim, document)
    shown = cli(*claim.verify_args())
    assert shown.code == 0, shown
    assert f"claimed by key {expected} ({algorithm})" in shown.out
    assert "operator-of-record" not in shown.text
    as_json = cli(*claim.verify_args(), "--json")
    assert json.loads(as_json.out)["keyid"] == expected


def test_a_failed_signature_does_not_print_the_envelopes_key_ids(
    ed_claim: Claim, cli: CliRunner, tmp_path: Path
) -> None:
    _, other = keygen(cli, tmp_path / "other")
    document = envelope_document(ed_claim)
    document["signatures"][0]["keyid"] = "trusted-operator"
    write_envelope(ed_claim, document)
    ran = cli(*ed_claim.verify_args(public_key=other))
    assert ran.code == 1, ran
    assert f"key id {load_public_key(other).keyid}" in ran.err
    assert "trusted-operator" not in ran.text


# --- signatures: capped, each checked once ------------------------------------------------------


def _with_signatures(claim: Claim, count: int) -> dict[str, Any]:
    document = envelope_document(claim)
    genuine = document["signatures"][0]
    junk = base64.b64encode(bytes(64)).decode()
    document["signatures"] = [{"keyid": f"k{i}", "sig": junk} for i in range(count - 1)]
    document["signatures"].append(genuine)
    return document


def test_up_to_the_cap_the_genuine_signature_is_found_checking_each_once(
    ed_claim: Claim, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_envelope(ed_claim, _with_signatures(ed_claim, MAX_SIGNATURES))
    calls: list[bytes] = []
    verifies = PublicKey.verifies

    def counted(self: PublicKey, signature: bytes, data: bytes) -> bool:
        calls.append(signature)
        return verifies(self, signature, data)

    monkeypatch.setattr(PublicKey, "verifies", counted)
    ran = cli(*ed_claim.verify_args())
    assert ran.code == 0, ran
    assert len(calls) == MAX_SIGNATURES  # one check a signature: linear


def test_more_signatures_than_the_cap_are_refused_unchecked(
    ed_claim: Claim, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_envelope(ed_claim, _with_signatures(ed_claim, 20_000))
    calls: list[bytes] = []
    monkeypatch.setattr(PublicKey, "verifies", lambda self, s, d: calls.append(s) or False)
    ran = cli(*ed_claim.verify_args())
    assert ran.code == 2, ran
    assert f"20000 signatures; an envelope may carry at most {MAX_SIGNATURES}" in ran.err
    assert calls == []


# --- envelopes: strict UTF-8 JSON ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("encode", "message"),
    [
        (lambda text: b"\xef\xbb\xbf" + text.encode(), "byte-order mark"),
        (lambda text: text.encode("utf-16"), "not UTF-8"),
        (lambda text: text.encode("utf-16-le"), "not JSON"),
        (lambda text: text.encode("utf-16-be"), "not JSON"),
        (lambda text: text.encode("utf-32"), "not UTF-8"),
        (lambda text: text.encode("utf-32-le"), "not JSON"),
    ],
    ids=["utf-8-bom", "utf-16-bom", "utf-16-le", "utf-16-be", "utf-32-bom", "utf-32-le"],
)
def test_an_envelope_in_another_encoding_is_refused(
    ed_claim: Claim, cli: CliRunner, encode: Any, message: str
) -> None:
    ed_claim.envelope.write_bytes(encode(ed_claim.envelope.read_text(encoding="utf-8")))
    ran = cli(*ed_claim.verify_args())
    assert ran.code == 2, ran
    assert message in ran.err


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: text.replace('"payloadType"', '"payloadType":"x","payloadType"'),
         "duplicate keys payloadType"),
        (lambda text: text.replace('"keyid":"', '"keyid":"\\ud800'), "lone surrogate"),
        (lambda text: text.replace('"signatures":[', '"signatures":[NaN,'), "NaN is not JSON"),
    ],
    ids=["duplicate-key", "lone-surrogate", "nan"],
)  # fmt: skip
def test_an_envelope_that_is_not_i_json_is_refused(
    ed_claim: Claim, cli: CliRunner, edit: Any, message: str
) -> None:
    ed_claim.envelope.write_text(edit(ed_claim.envelope.read_text(encoding="utf-8")))
    ran = cli(*ed_claim.verify_args())
    assert ran.code == 2, ran
    assert message in ran.err


def test_a_sidecar_in_utf_16_is_refused_by_attest(
    tmp_path: Path, cli: CliRunner, ed_claim: Claim
) -> None:
    sidecar = tmp_path / "utf16.sidecar.json"
    sidecar.write_bytes(ed_claim.sidecar.read_text(encoding="utf-8").encode("utf-16"))
    output = tmp_path / "again.claim.json"
    ran = cli(
        "attest", "--run-log", ed_claim.run_log, "--sidecar", sidecar, "--environment",
        ed_claim.environment, "--key", ed_claim.private_key, "--envelope-output", output,
    )  # fmt: skip
    assert ran.code == 2, ran
    assert "not UTF-8" in ran.err
    assert not output.exists()


_B64: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _pad_bits_set(value: str) -> str:
    """``value`` (base64 ending in ``=``) with a pad bit of its last character set: the same
    bytes to a lenient decoder, another spelling of them."""
    data = value.rstrip("=")
    last = _B64.index(data[-1])
    return data[:-1] + _B64[last | 1] + value[len(data) :]


def test_a_signature_in_another_base64_spelling_is_refused(ed_claim: Claim, cli: CliRunner) -> None:
    # a lenient decoder reads the same bytes, so the same signature verifies another file
    document = json.loads(ed_claim.envelope.read_text(encoding="utf-8"))
    entry = document["signatures"][0]
    assert entry["sig"].endswith("==")  # 64 bytes: the last character holds 4 pad bits
    spelled = _pad_bits_set(entry["sig"])
    assert spelled != entry["sig"]
    assert base64.b64decode(spelled, validate=True) == base64.b64decode(entry["sig"])
    entry["sig"] = spelled
    ed_claim.envelope.write_text(json.dumps(document), encoding="utf-8")
    ran = cli(*ed_claim.verify_args())
    assert ran.code == 2, ran
    assert "not base64 in its one spelling" in ran.err


def _loose(text: str, how: str) -> bytes:
    """A JSON document ``text`` (one object) re-written as a loose reader would still read it."""
    if how == "utf-16":
        return text.encode("utf-16")
    if how == "bom":
        return b"\xef\xbb\xbf" + text.encode("utf-8")
    # a second value of the first key, before it: a reviewer reads the first, json.loads the last
    document = json.loads(text)
    key = next(iter(document))
    return ("{" + json.dumps(key) + ":" + json.dumps("forged") + "," + text.strip()[1:]).encode()


@pytest.mark.parametrize("how", ["utf-16", "bom", "duplicate-key"])
def test_an_environment_fingerprint_read_loosely_is_refused_by_attest(
    tmp_path: Path, cli: CliRunner, ed_claim: Claim, how: str
) -> None:
    environment = tmp_path / "loose.env.json"
    environment.write_bytes(_loose(ed_claim.environment.read_text(encoding="utf-8"), how))
    output = tmp_path / "again.claim.json"
    ran = cli(
        "attest", "--run-log", ed_claim.run_log, "--sidecar", ed_claim.sidecar, "--environment",
        environment, "--key", ed_claim.private_key, "--envelope-output", output,
    )  # fmt: skip
    assert ran.code == 2, ran
    assert "loose.env.json" in ran.err
    assert not output.exists()


# --- PEM: one block and nothing else ------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda pem, other: b"comment line\n" + pem, "not exactly one PUBLIC KEY PEM block"),
        (lambda pem, other: pem + b"trailing junk\n", "not exactly one PUBLIC KEY PEM block"),
        (lambda pem, other: pem + other, "not exactly one PUBLIC KEY PEM block"),
        (lambda pem, other: pem + b"\n", "not exactly one PUBLIC KEY PEM block"),
        (lambda pem, other: pem.replace(b"\n", b"\r\n"), "not exactly one PUBLIC KEY PEM block"),
        (lambda pem, other: pem.replace(b"PUBLIC KEY", b"EC PUBLIC KEY"),
         "not exactly one PUBLIC KEY PEM block"),
        (lambda pem, other: pem.replace(b"\n", b"\n ", 1), "not a strict PUBLIC KEY PEM block"),
    ],
    ids=["junk-before", "junk-after", "second-block", "blank-line-after", "crlf", "other-label",
         "indented-body"],
)  # fmt: skip
def test_a_public_key_file_that_is_not_one_strict_pem_block_is_refused(
    ed_claim: Claim, cli: CliRunner, tmp_path: Path, edit: Any, message: str
) -> None:
    _, other = keygen(cli, tmp_path / "other")
    key = tmp_path / "edited.pub"
    key.write_bytes(edit(ed_claim.public_key.read_bytes(), other.read_bytes()))
    ran = cli(*ed_claim.verify_args(public_key=key))
    assert ran.code == 2, ran
    assert message in ran.err


def test_a_public_key_in_another_base64_spelling_is_refused(
    ed_claim: Claim, cli: CliRunner, tmp_path: Path
) -> None:
    # the same key to a lenient decoder: one key, many files, each with its own sha256
    lines = ed_claim.public_key.read_text(encoding="ascii").split("\n")
    assert lines[1].endswith("=")  # an Ed25519 key's 44 bytes: the last character has pad bits
    lines[1] = _pad_bits_set(lines[1])
    key = tmp_path / "respelled.pub"
    key.write_text("\n".join(lines), encoding="ascii")
    ran = cli(*ed_claim.verify_args(public_key=key))
    assert ran.code == 2, ran
    assert "not base64 in its one spelling" in ran.err


def _attest_with(cli: CliRunner, claim: Claim, key: Path, output: Path) -> Any:
    return cli(
        "attest", "--run-log", claim.run_log, "--sidecar", claim.sidecar, "--environment",
        claim.environment, "--key", key, "--envelope-output", output,
    )  # fmt: skip


@pytest.mark.parametrize(
    "edit",
    [
        lambda pem, other: b"junk\n" + pem,
        lambda pem, other: pem + b"junk",
        lambda pem, other: pem + other,
    ],
    ids=["junk-before", "junk-after", "second-block"],
)
def test_a_private_key_file_that_is_not_one_strict_pem_block_is_refused(
    ed_claim: Claim, cli: CliRunner, tmp_path: Path, edit: Any
) -> None:
    other, _ = keygen(cli, tmp_path / "other")
    key = ed_claim.private_key.with_name("edited.key")
    key.write_bytes(edit(ed_claim.private_key.read_bytes(), other.read_bytes()))
    key.chmod(0o600)
    output = tmp_path / "again.claim.json"
    ran = _attest_with(cli, ed_claim, key, output)
    assert ran.code == 2, ran
    assert "not exactly one PRIVATE KEY PEM block" in ran.err
    assert not output.exists()


# --- private keys: owned by you, in a place only you can change ---------------------------------


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602])
def test_a_private_key_others_may_read_or_write_is_refused(
    ed_claim: Claim, cli: CliRunner, tmp_path: Path, mode: int
) -> None:
    ed_claim.private_key.chmod(mode)
    output = tmp_path / "again.claim.json"
    ran = _attest_with(cli, ed_claim, ed_claim.private_key, output)
    assert ran.code == 2, ran
    assert f"is readable by others (mode {mode:04o})" in ran.err
    assert not output.exists()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")


@needs_root
def test_a_private_key_owned_by_another_user_is_refused(
    ed_claim: Claim, cli: CliRunner, tmp_path: Path
) -> None:
    os.chown(ed_claim.private_key, 4242, -1)
    output = tmp_path / "again.claim.json"
    ran = _attest_with(cli, ed_claim, ed_claim.private_key, output)
    assert ran.code == 2, ran
    assert "is owned by user id 4242, not by you" in ran.err
    assert not output.exists()


@needs_root
def test_a_private_key_in_a_directory_of_another_user_is_refused(
    ed_claim: Claim, cli: CliRunner, tmp_path: Path
) -> None:
    os.chown(ed_claim.private_key.parent, 4242, -1)
    ran = _attest_with(cli, ed_claim, ed_claim.private_key, tmp_path / "again.claim.json")
    assert ran.code == 2, ran
    assert "is owned by user id 4242" in ran.err


@pytest.mark.parametrize(
    ("where", "mode", "refused"),
    [
        ("keys", 0o777, True),
        ("keys", 0o770, True),
        ("keys", 0o1777, True),  # the key's own directory: no sticky exception, as ssh
        ("parent", 0o777, True),
        ("parent", 0o1777, False),  # an ancestor like /tmp: others cannot rename what is yours
        ("keys", 0o755, False),
    ],
    ids=["world-writable", "group-writable", "sticky-itself", "parent-world-writable",
         "parent-sticky", "keys-0755"],
)  # fmt: skip
def test_a_private_key_in_a_directory_others_can_write_is_refused(
    tmp_path: Path, cli: CliRunner, where: str, mode: int, refused: bool
) -> None:
    claim = make_claim(tmp_path / "parent", cli, "ed25519")
    directory = claim.private_key.parent if where == "keys" else tmp_path / "parent"
    directory.chmod(mode)
    output = tmp_path / "again.claim.json"
    try:
        ran = _attest_with(cli, claim, claim.private_key, output)
    finally:
        directory.chmod(0o700)
    if refused:
        assert ran.code == 2, ran
        assert f"is writable by others (mode {mode:04o})" in ran.err
        assert not output.exists()
    else:
        assert ran.code == 0, ran


def test_a_private_key_reached_through_a_link_is_checked_where_it_lies(
    ed_claim: Claim, cli: CliRunner, tmp_path: Path
) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    moved = open_dir / "detserve.key"
    ed_claim.private_key.rename(moved)
    open_dir.chmod(0o777)
    link = ed_claim.private_key
    link.symlink_to(moved)
    try:
        ran = _attest_with(cli, ed_claim, link, tmp_path / "again.claim.json")
    finally:
        open_dir.chmod(0o700)
    assert ran.code == 2, ran
    assert f"directory {open_dir} is writable by others" in ran.err


# --- keygen --name: a plain file name -----------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../x", "a/b", "/abs", ".hidden", "..", "a..b", "", "x" * 65, "a\nb", "a b", "-x"],
    ids=["dotdot-slash", "slash", "absolute", "leading-dot", "dotdot", "inner-dotdot", "empty",
         "too-long", "newline", "space", "leading-dash"],
)  # fmt: skip
def test_keygen_refuses_a_name_that_is_not_a_plain_file_name(
    tmp_path: Path, cli: CliRunner, name: str
) -> None:
    keys = tmp_path / "deep" / "keys"
    ran = cli("keygen", "--output-dir", keys, "--name", name)
    assert ran.code == 2, ran
    assert "is not a plain file name" in ran.err
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == []


def test_keygen_takes_a_plain_name_and_makes_a_private_directory(
    tmp_path: Path, cli: CliRunner
) -> None:
    keys = tmp_path / "new-keys"
    ran = cli("keygen", "--output-dir", keys, "--name", "operator-2.prod")
    assert ran.code == 0, ran
    assert (keys / "operator-2.prod.key").is_file()
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700


def test_keygen_refuses_a_directory_others_can_write(tmp_path: Path, cli: CliRunner) -> None:
    keys = tmp_path / "shared"
    keys.mkdir()
    keys.chmod(0o777)
    ran = cli("keygen", "--output-dir", keys)
    assert ran.code == 2, ran
    assert "is writable by others" in ran.err
    assert list(keys.iterdir()) == []
