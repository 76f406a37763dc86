"""A publisher's model signature is verified before anything is derived from it.

Which stage failed decides the exit code: a signature that does not verify with the given key or
chain is 1; a file that is not a well-formed signature, a key that cannot be used, or authentic
content detserve cannot use is 2. No case writes a manifest.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from detserve import api
from detserve.errors import (
    EXIT_INPUT,
    EXIT_OK,
    EXIT_VERIFICATION,
    ModelSignatureError,
    SignatureInvalid,
)
from detserve.model_signature import SignatureTrust, verify_model_signature

from .committed import CliRunner, TinyWorkspace, sha256_hex
from .signing_rig import (
    Authority,
    KeyPair,
    assert_refused,
    bundle_of,
    details,
    hash_signed,
    public_pem,
    sign_statement,
    sign_with_certificate,
    sign_with_key,
    statement_of,
    verify_signed,
)

Statement = dict[str, Any]


@pytest.fixture
def other_keys(tmp_path: Path) -> KeyPair:
    return KeyPair.make(tmp_path / "keys", "someone-else")


@pytest.fixture
def output(tmp_path: Path) -> Path:
    return tmp_path / "derived.sha256"


def rewrite_bundle(signature: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    bundle = bundle_of(signature)
    change(bundle)
    signature.write_text(json.dumps(bundle), encoding="utf-8")
    return signature


# --- the trust root ------------------------------------------------------------------------------


def test_a_signature_by_another_key_is_exit_1(
    tiny_workspace: TinyWorkspace,
    cli: CliRunner,
    signature: Path,
    other_keys: KeyPair,
    output: Path,
) -> None:
    result = hash_signed(
        cli, tiny_workspace, signature, "--public-key", other_keys.public, output=output
    )
    assert_refused(
        result,
        EXIT_VERIFICATION,
        output,
        f"does not verify with public key sha256:{other_keys.fingerprint}",
    )


def test_a_signature_by_another_key_without_a_key_hint_is_exit_1(
    tiny_workspace: TinyWorkspace,
    cli: CliRunner,
    signature: Path,
    other_keys: KeyPair,
    output: Path,
) -> None:
    # The hint is not signed: without it the ECDSA check itself must refuse the key.
    rewrite_bundle(signature, lambda b: b["verificationMaterial"]["publicKey"].pop("hint"))
    result = hash_signed(
        cli, tiny_workspace, signature, "--public-key", other_keys.public, output=output
    )
    assert_refused(result, EXIT_VERIFICATION, output, "does not verify with public key")


def test_an_old_signature_without_a_key_hint_verifies_and_the_library_note_goes_to_stderr(
    tiny_workspace: TinyWorkspace, cli: CliRunner, signature: Path, keys: KeyPair, output: Path
) -> None:
    rewrite_bundle(signature, lambda b: b["verificationMaterial"]["publicKey"].pop("hint"))
    result = hash_signed(
        cli, tiny_workspace, signature, "--public-key", keys.public, "--json", output=output
    )
    assert result.code == EXIT_OK, result.text
    report = json.loads(result.out)  # stdout holds the JSON and nothing the library printed
    assert any(
        "older verification material format" in note for note in report["signature"]["notes"]
    )


def test_the_library_api_never_prints(
    signature: Path, keys: KeyPair, capsys: pytest.CaptureFixture[str]
) -> None:
    rewrite_bundle(signature, lambda b: b["verificationMaterial"]["publicKey"].pop("hint"))
    signed = verify_model_signature(signature, SignatureTrust.of(keys.public))
    assert capsys.readouterr() == ("", "")
    assert signed.notes
    assert "older verification material" in signed.notes[0]
    assert signed.signature_sha256 == sha256_hex(signature.read_bytes())


def test_signed_content_changed_to_match_a_tampered_file_is_exit_1(
    tiny_workspace: TinyWorkspace, cli: CliRunner, signature: Path, keys: KeyPair, output: Path
) -> None:
    # The attacker changes a weight and edits the signed digest (and the root digest) to match;
    # the envelope's signature is left as the publisher made it.
    blob = tiny_workspace.blob_of("model.safetensors")
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    statement = statement_of(signature)
    for resource in statement["predicate"]["resources"]:
        if resource["name"] == "model.safetensors":
            resource["digest"] = sha256_hex(bytes(data))
    forged = sign_statement(
        statement, KeyPair.make(signature.parent, "forger"), signature.with_name("forged.sig")
    )
    original_sig = bundle_of(signature)["dsseEnvelope"]["signatures"]

    def keep_publishers_signature(bundle: dict[str, Any]) -> None:
        bundle["dsseEnvelope"]["signatures"] = original_sig
        bundle["verificationMaterial"] = bundle_of(signature)["verificationMaterial"]

    rewrite_bundle(forged, keep_publishers_signature)
    result = hash_signed(cli, tiny_workspace, forged, "--public-key", keys.public, output=output)
    assert_refused(result, EXIT_VERIFICATION, output, "does not verify with public key")


def test_a_changed_signature_value_is_exit_1(
    tiny_workspace: TinyWorkspace, cli: CliRunner, signature: Path, keys: KeyPair, output: Path
) -> None:
    def flip(bundle: dict[str, Any]) -> None:
        sig = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
        sig[-1] ^= 0x01
        bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(sig).decode()

    rewrite_bundle(signature, flip)
    result = hash_signed(cli, tiny_workspace, signature, "--public-key", keys.public, output=output)
    assert result.code == EXIT_VERIFICATION, result.text
    assert not output.exists()


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n", "not a PEM"),
        (b"", "not a PEM"),
        ("junk-before", "not exactly one PUBLIC KEY PEM block"),
        ("junk-after", "not exactly one PUBLIC KEY PEM block"),
        ("second-block", "not exactly one PUBLIC KEY PEM block"),
        ("rsa", "not an elliptic-curve key"),
        ("x25519", "not an elliptic-curve key"),
    ],
)
def test_a_key_that_cannot_be_used_is_exit_2(
    tiny_workspace: TinyWorkspace,
    cli: CliRunner,
    keys: KeyPair,
    signature: Path,
    tmp_path: Path,
    output: Path,
    key: bytes | str,
    message: str,
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import x25519

    path = tmp_path / "bad.pub"
    if key == "rsa":
        path.write_bytes(public_pem(rsa.generate_private_key(65537, 2048)))
    elif key == "x25519":
        public = x25519.X25519PrivateKey.generate().public_key()
        path.write_bytes(
            public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    elif key in ("junk-before", "junk-after", "second-block"):
        # the signer's own key, in a file a loose PEM reader takes the first block of
        pem = keys.public.read_bytes()
        other = public_pem(ec.generate_private_key(ec.SECP256R1()))
        edited = {"junk-before": b"comment\n" + pem, "junk-after": pem + b"junk\n"}
        path.write_bytes(edited.get(key, pem + other))
    else:
        assert isinstance(key, bytes)
        path.write_bytes(key)
    result = hash_signed(cli, tiny_workspace, signature, "--public-key", path, output=output)
    assert_refused(result, EXIT_INPUT, output, message)


def test_a_p384_key_verifies(
    tiny_workspace: TinyWorkspace, cli: CliRunner, published: Path, tmp_path: Path, output: Path
) -> None:
    keys = KeyPair.make(tmp_path / "keys", "p384", ec.SECP384R1())
    signature = sign_with_key(published, tmp_path / "model.sig", keys)
    result = hash_signed(cli, tiny_workspace, signature, "--public-key", keys.public, output=output)
    assert result.code == EXIT_OK, result.text


@pytest.mark.parametrize(
    "options",
    [
        ["--public-key", "k.pub"],
        ["--certificate-chain", "ca.pem"],
        ["--model-signature", "model.sig"],
        ["--model-signature", "model.sig", "--public-key", "k.pub", "--certificate-chain", "c"],
    ],
    ids=["key-alone", "chain-alone", "signature-alone", "key-and-chain"],
)
def test_a_signature_needs_exactly_one_trust_root(
    tiny_workspace: TinyWorkspace, cli: CliRunner, options: list[str], output: Path
) -> None:
    for command in (
        ["hash", "--manifest-output", output],
        ["verify", "--manifest", tiny_workspace.manifest],
    ):
        result = cli(*command, "--snapshot", tiny_workspace.snapshot, *options)
        assert result.code == EXIT_INPUT, result.text
        assert "--public-key" in result.err
    assert not output.exists()


# --- the signature file --------------------------------------------------------------------------


def truncate_half(signature: Path) -> None:
    data = signature.read_bytes()
    signature.write_bytes(data[: len(data) // 2])


def two_signatures(signature: Path) -> None:
    rewrite_bundle(
        signature,
        lambda b: b["dsseEnvelope"]["signatures"].append(b["dsseEnvelope"]["signatures"][0]),
    )


def keyless(signature: Path) -> None:
    def change(bundle: dict[str, Any]) -> None:
        bundle["verificationMaterial"] = {
            "certificate": {"rawBytes": base64.b64encode(b"fulcio").decode()},
            "tlogEntries": [],
        }

    rewrite_bundle(signature, change)


def other_media_type(signature: Path) -> None:
    rewrite_bundle(
        signature,
        lambda b: b.update(mediaType="application/vnd.dev.sigstore.bundle+json;version=0.2"),
    )


def duplicate_key(signature: Path) -> None:
    text = signature.read_text(encoding="utf-8")
    signature.write_text(text[:-1] + ', "mediaType": "x"}', encoding="utf-8")


def utf16(signature: Path) -> None:
    signature.write_bytes(signature.read_text(encoding="utf-8").encode("utf-16"))


def byte_order_mark(signature: Path) -> None:
    signature.write_bytes(b"\xef\xbb\xbf" + signature.read_bytes())


def not_a_number(signature: Path) -> None:
    # an unknown key the library ignores, so only the reader can refuse it
    text = signature.read_text(encoding="utf-8")
    signature.write_text(text[:-1] + ', "x": NaN}', encoding="utf-8")


def past_a_double(signature: Path) -> None:
    text = signature.read_text(encoding="utf-8")
    signature.write_text(text[:-1] + ', "x": 1e400}', encoding="utf-8")


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (truncate_half, ": not JSON"),
        (lambda p: p.write_bytes(b""), ": not JSON"),
        (lambda p: p.write_bytes(b"\xff\xfe"), "not UTF-8"),
        (lambda p: p.write_text("[1, 2]"), "not a JSON object"),
        (lambda p: p.write_text('{"a": 1}'), "is not a Sigstore bundle"),
        (lambda p: rewrite_bundle(p, lambda b: b.pop("dsseEnvelope")), "is not a Sigstore bundle"),
        (two_signatures, "2 signatures in the envelope, expected 1"),
        (keyless, "Sigstore keyless signature"),
        (other_media_type, "media type"),
        (duplicate_key, "duplicate keys mediaType"),
        (utf16, "not UTF-8"),
        (byte_order_mark, "byte-order mark"),
        (not_a_number, "NaN is not JSON"),
        (past_a_double, "overflows a double"),
    ],
    ids=[
        "truncated",
        "empty",
        "not-utf8",
        "json-array",
        "not-a-bundle",
        "no-envelope",
        "two-signatures",
        "keyless",
        "media-type",
        "duplicate-key",
        "utf-16",
        "bom",
        "nan",
        "1e400",
    ],
)
def test_a_malformed_signature_file_is_exit_2(
    tiny_workspace: TinyWorkspace,
    cli: CliRunner,
    signature: Path,
    keys: KeyPair,
    output: Path,
    spoil: Callable[[Path], object],
    message: str,
) -> None:
    spoil(signature)
    result = hash_signed(cli, tiny_workspace, signature, "--public-key", keys.public, output=output)
    assert result.code == EXIT_INPUT, result.text
    assert message in result.err
    assert "Traceback" not in result.err
    assert not output.exists()
    verified = verify_signed(
        cli,
        tiny_workspace,
        signature,
        "--public-key",
        keys.public,
        manifest=tiny_workspace.manifest,
    )
    assert verified.code == EXIT_INPUT, verified.text


def test_a_fifo_as_signature_is_refused_unread(
    tiny_workspace: TinyWorkspace, cli: CliRunner, keys: KeyPair, tmp_path: Path, output: Path
) -> None:
    fifo = tmp_path / "model.sig"
    os.mkfifo(fifo)
    result = hash_signed(cli, tiny_workspace, fifo, "--public-key", keys.public, output=output)
    assert result.code == EXIT_INPUT, result.text
    assert "not a regular file" in result.err


def test_the_library_api_raises_typed_errors(
    signature: Path, other_keys: KeyPair, tmp_path: Path, tiny_workspace: TinyWorkspace
) -> None:
    with pytest.raises(SignatureInvalid) as invalid:
        api.hash_snapshot(
            snapshot=tiny_workspace.snapshot,
            output=tmp_path / "o.sha256",
            model_signature=signature,
            public_key=other_keys.public,
        )
    assert invalid.value.exit_code == EXIT_VERIFICATION
    truncate_half(signature)
    with pytest.raises(ModelSignatureError) as malformed:
        api.verify(
            snapshot=tiny_workspace.snapshot,
            manifest=tiny_workspace.manifest,
            model_signature=signature,
            public_key=other_keys.public,
        )
    assert malformed.value.exit_code == EXIT_INPUT


# --- authentic content detserve cannot use ------------------------------------------------------


def resources(statement: Statement) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = statement["predicate"]["resources"]
    return found


def duplicate_resource(statement: Statement) -> None:
    resources(statement).append(dict(resources(statement)[0]))


def same_file_twice(statement: Statement) -> None:
    resources(statement).append(dict(resources(statement)[0], digest="ab" * 32))


def other_algorithm(statement: Statement) -> None:
    resources(statement)[0]["algorithm"] = "blake3"


def escaping_path(statement: Statement) -> None:
    resources(statement)[0]["name"] = "../outside.json"


def unnormalised_path(statement: Statement) -> None:
    resources(statement)[0]["name"] = "./config.json"


def short_digest(statement: Statement) -> None:
    resources(statement)[0]["digest"] = "ab" * 16


def no_resources(statement: Statement) -> None:
    statement["predicate"]["resources"] = []


def pre_1_0(statement: Statement) -> None:
    statement["predicateType"] = "https://model_signing/Digests/v0.1"


def unknown_method(statement: Statement) -> None:
    statement["predicate"]["serialization"]["method"] = "tensors"


def gap_between_shards(statement: Statement) -> None:
    statement["predicate"]["serialization"].update(method="shards", shard_size=1000)
    first = resources(statement)[0]
    statement["predicate"]["resources"] = [
        dict(first, name="config.json:0:1000", algorithm="sha256-sharded-1000"),
        dict(first, name="config.json:2000:2100", algorithm="sha256-sharded-1000"),
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (duplicate_resource, "listed twice"),
        (same_file_twice, "listed twice"),
        (other_algorithm, "is in 'blake3', not sha256"),
        (escaping_path, "escapes the snapshot"),
        (unnormalised_path, "not normalised"),
        (short_digest, "is not sha256"),
        (no_resources, "signs nothing"),
        (pre_1_0, "before 1.0 are not supported"),
        (unknown_method, "neither 'files' nor 'shards'"),
        (gap_between_shards, "not contiguous from byte 0"),
    ],
)
def test_authentic_content_detserve_cannot_use_is_exit_2(
    tiny_workspace: TinyWorkspace,
    cli: CliRunner,
    signature: Path,
    keys: KeyPair,
    output: Path,
    change: Callable[[Statement], None],
    message: str,
) -> None:
    statement = statement_of(signature)
    change(statement)
    sign_statement(statement, keys, signature)  # signed by the publisher's own key
    result = hash_signed(cli, tiny_workspace, signature, "--public-key", keys.public, output=output)
    assert result.code == EXIT_INPUT, result.text
    assert "verified, but its content is not a model manifest detserve can use" in result.err
    assert message in result.err
    assert not output.exists()


def test_a_root_digest_that_does_not_add_up_is_exit_2(
    tiny_workspace: TinyWorkspace, cli: CliRunner, signature: Path, keys: KeyPair, output: Path
) -> None:
    statement = statement_of(signature)
    resources(statement)[0]["digest"] = "ab" * 32
    sign_statement(statement, keys, signature, fix_root=False)
    result = hash_signed(cli, tiny_workspace, signature, "--public-key", keys.public, output=output)
    assert result.code == EXIT_INPUT, result.text
    assert "Manifest is inconsistent" in result.err


def test_a_duplicate_key_in_the_signed_statement_is_exit_2(
    tiny_workspace: TinyWorkspace, cli: CliRunner, signature: Path, keys: KeyPair, output: Path
) -> None:
    text = json.dumps(statement_of(signature))
    sign_statement((text[:-1] + ', "predicateType": "other"}').encode(), keys, signature)
    result = hash_signed(cli, tiny_workspace, signature, "--public-key", keys.public, output=output)
    assert result.code == EXIT_INPUT, result.text
    assert "duplicate keys predicateType" in result.err


@pytest.mark.parametrize(
    ("spelling", "message"),
    [
        (b', "x": NaN}', "NaN is not JSON"),
        (b', "x": 1e400}', "overflows a double"),
    ],
    ids=["nan", "1e400"],
)
def test_a_signed_statement_json_cannot_write_back_is_exit_2(
    tiny_workspace: TinyWorkspace,
    cli: CliRunner,
    signature: Path,
    keys: KeyPair,
    output: Path,
    spelling: bytes,
    message: str,
) -> None:
    """Signed by the publisher's key, but not I-JSON: refused, never read as a float."""
    text = json.dumps(statement_of(signature)).encode()
    sign_statement(text[:-1] + spelling, keys, signature)
    result = hash_signed(cli, tiny_workspace, signature, "--public-key", keys.public, output=output)
    assert result.code == EXIT_INPUT, result.text
    assert message in result.err, result.text
    assert not output.exists()


def test_a_signed_statement_in_utf16_is_exit_2(
    tiny_workspace: TinyWorkspace, cli: CliRunner, signature: Path, keys: KeyPair, output: Path
) -> None:
    sign_statement(json.dumps(statement_of(signature)).encode("utf-16"), keys, signature)
    result = hash_signed(cli, tiny_workspace, signature, "--public-key", keys.public, output=output)
    assert result.code == EXIT_INPUT, result.text
    assert "not UTF-8" in result.err, result.text


def test_the_rig_signs_as_the_library_does(
    tiny_workspace: TinyWorkspace, cli: CliRunner, signature: Path, keys: KeyPair, output: Path
) -> None:
    # The cases above change one thing each: unchanged, the rig's signature verifies.
    sign_statement(statement_of(signature), keys, signature)
    result = hash_signed(cli, tiny_workspace, signature, "--public-key", keys.public, output=output)
    assert result.code == EXIT_OK, result.text


# --- certificate chains --------------------------------------------------------------------------


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.make(tmp_path / "pki", "publisher")


@pytest.fixture
def certified(published: Path, authority: Authority, tmp_path: Path) -> Path:
    return sign_with_certificate(published, tmp_path / "certified.sig", authority)


def test_a_certificate_signature_verifies_with_the_publishers_root(
    tiny_workspace: TinyWorkspace,
    cli: CliRunner,
    certified: Path,
    authority: Authority,
    output: Path,
) -> None:
    result = hash_signed(
        cli, tiny_workspace, certified, "--certificate-chain", authority.root, output=output
    )
    assert result.code == EXIT_OK, result.text
    assert "signed by certificate CN=publisher model signer (sha256:" in result.err
    verified = verify_signed(
        cli, tiny_workspace, certified, "--certificate-chain", authority.root, manifest=output
    )
    assert verified.code == EXIT_OK, verified.text


def test_a_certificate_from_another_root_is_exit_1(
    tiny_workspace: TinyWorkspace, cli: CliRunner, certified: Path, tmp_path: Path, output: Path
) -> None:
    stranger = Authority.make(tmp_path / "pki", "stranger")
    result = hash_signed(
        cli, tiny_workspace, certified, "--certificate-chain", stranger.root, output=output
    )
    assert result.code == EXIT_VERIFICATION, result.text
    assert f"does not verify with certificate chain {stranger.root}" in result.err
    [claimed] = details(result)
    assert claimed.startswith("claimed, not verified: certificate CN=publisher model signer")
    assert not output.exists()


def test_a_certificate_not_for_signing_is_exit_1(
    tiny_workspace: TinyWorkspace, cli: CliRunner, published: Path, tmp_path: Path, output: Path
) -> None:
    authority = Authority.make(tmp_path / "pki", "encrypting", signing=False)
    signature = sign_with_certificate(published, tmp_path / "enc.sig", authority)
    result = hash_signed(
        cli, tiny_workspace, signature, "--certificate-chain", authority.root, output=output
    )
    assert result.code == EXIT_VERIFICATION, result.text
    assert "cannot be used for signing" in result.err


def test_the_form_of_the_trust_root_must_match_the_signature(
    tiny_workspace: TinyWorkspace,
    cli: CliRunner,
    certified: Path,
    signature: Path,
    authority: Authority,
    keys: KeyPair,
    output: Path,
) -> None:
    by_key = hash_signed(cli, tiny_workspace, certified, "--public-key", keys.public, output=output)
    assert by_key.code == EXIT_VERIFICATION, by_key.text
    assert "was made with a certificate, not with the given public key" in by_key.err
    by_chain = hash_signed(
        cli, tiny_workspace, signature, "--certificate-chain", authority.root, output=output
    )
    assert by_chain.code == EXIT_VERIFICATION, by_chain.text
    assert "was made with a public key, not with a certificate" in by_chain.err
    assert not output.exists()


def test_a_chain_file_without_a_certificate_is_exit_2(
    tiny_workspace: TinyWorkspace, cli: CliRunner, certified: Path, keys: KeyPair, output: Path
) -> None:
    result = hash_signed(
        cli, tiny_workspace, certified, "--certificate-chain", keys.public, output=output
    )
    assert result.code == EXIT_INPUT, result.text
    assert "line 1: '-----BEGIN PUBLIC KEY-----' is neither part of a CERTIFICATE" in result.err
    assert details(result) == []


def test_a_chain_file_of_comments_alone_is_exit_2(
    tiny_workspace: TinyWorkspace, cli: CliRunner, certified: Path, tmp_path: Path, output: Path
) -> None:
    chain = tmp_path / "comments.pem"
    chain.write_text("# a CA bundle\n\n# with nothing in it\n")
    result = hash_signed(
        cli, tiny_workspace, certified, "--certificate-chain", chain, output=output
    )
    assert result.code == EXIT_INPUT, result.text
    assert "holds no PEM certificate" in result.err


def with_text(root: Path, before: str, between: str, after: str) -> str:
    """The root twice (a bundle of two), with ``before``, ``between`` and ``after`` around it."""
    block = root.read_text(encoding="ascii")
    return before + block + between + block + after


def test_a_chain_file_with_the_comments_ca_bundles_carry_verifies(
    tiny_workspace: TinyWorkspace,
    cli: CliRunner,
    certified: Path,
    authority: Authority,
    tmp_path: Path,
    output: Path,
) -> None:
    """As Mozilla's and Debian's bundles are written: '#' lines and empty lines around blocks."""
    chain = tmp_path / "bundle.pem"
    chain.write_text(
        with_text(
            authority.root, "##\n## Bundle of CA Root Certificates\n##\n\n", "\n# two\n", "\n"
        )
    )
    result = hash_signed(
        cli, tiny_workspace, certified, "--certificate-chain", chain, output=output
    )
    assert result.code == EXIT_OK, result.text


@pytest.mark.parametrize(
    ("before", "between", "after", "message"),
    [
        (
            "",
            "Subject: CN=Trusted Corp\n",
            "",
            "line {between}: 'Subject: CN=Trusted Corp' is neither",
        ),
        ("GlobalSign Root CA\n==================\n", "", "", "line 1: 'GlobalSign Root CA'"),
        ("", "", "VERIFIED\n", "line {after}: 'VERIFIED' is neither"),
        ("", " # indented\n", "", "line {between}: ' # indented' is neither"),
        ("", "\x1b[2J\n", "", "line {between}: '\\x1b[2J' is neither"),
        ("", "", "-----BEGIN CERTIFICATE-----\n", "a CERTIFICATE block does not end"),
        ("", "-----BEGIN PRIVATE KEY-----\n", "", "line {between}: '-----BEGIN PRIVATE KEY-----'"),
    ],
    ids=["text-between", "title-before", "text-after", "indented-hash", "escape", "open", "key"],
)
def test_a_chain_file_with_anything_else_outside_its_blocks_is_exit_2(
    tiny_workspace: TinyWorkspace,
    cli: CliRunner,
    certified: Path,
    authority: Authority,
    tmp_path: Path,
    output: Path,
    before: str,
    between: str,
    after: str,
    message: str,
) -> None:
    """A loose PEM reader skips text outside its blocks, so a reader of the file and detserve
    would not read the same trust root: refused, naming the line, the line shown escaped."""
    size = len(authority.root.read_text().splitlines())  # lines of one block
    message = message.format(between=size + 1, after=2 * size + 1)
    chain = tmp_path / "chain.pem"
    chain.write_text(with_text(authority.root, before, between, after))
    result = hash_signed(
        cli, tiny_workspace, certified, "--certificate-chain", chain, output=output
    )
    assert result.code == EXIT_INPUT, result.text
    assert message in result.err, result.text
    assert "\x1b" not in result.text
    assert not output.exists()


def test_a_chain_block_not_in_its_strict_form_is_exit_2(
    tiny_workspace: TinyWorkspace,
    cli: CliRunner,
    certified: Path,
    authority: Authority,
    tmp_path: Path,
    output: Path,
) -> None:
    chain = tmp_path / "crlf.pem"
    chain.write_bytes(authority.root.read_bytes().replace(b"\n", b"\r\n"))
    result = hash_signed(
        cli, tiny_workspace, certified, "--certificate-chain", chain, output=output
    )
    assert result.code == EXIT_INPUT, result.text
    assert f"certificate chain {chain}" in result.err, result.text


def replace_certificate(signature: Path, der: bytes, *, at: int) -> Path:
    def change(bundle: dict[str, Any]) -> None:
        chain = bundle["verificationMaterial"]["x509CertificateChain"]["certificates"]
        chain[at]["rawBytes"] = base64.b64encode(der).decode()

    return rewrite_bundle(signature, change)


def rsa_leaf(authority: Authority) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    leaf = x509.load_pem_x509_certificate(authority.leaf.read_bytes())
    rsa_key = rsa.generate_private_key(65537, 2048)
    builder = (
        x509.CertificateBuilder()
        .subject_name(leaf.subject)
        .issuer_name(leaf.issuer)
        .public_key(rsa_key.public_key())
        .serial_number(leaf.serial_number)
        .not_valid_before(leaf.not_valid_before_utc)
        .not_valid_after(leaf.not_valid_after_utc)
    )
    return builder.sign(rsa_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("spoiled", "message"),
    [
        ("leaf-der", "a certificate of its chain is not DER"),
        ("chain-der", "a certificate of its chain is not DER"),
        ("leaf-rsa", "is not an elliptic-curve key"),
    ],
    ids=["leaf-der", "chain-der", "leaf-rsa"],
)
def test_a_certificate_chain_detserve_cannot_use_is_exit_2(
    tiny_workspace: TinyWorkspace,
    cli: CliRunner,
    certified: Path,
    authority: Authority,
    output: Path,
    spoiled: str,
    message: str,
) -> None:
    # The signer put its root after the leaf: the chain in the bundle has two certificates.
    der = rsa_leaf(authority) if spoiled == "leaf-rsa" else b"not der"
    replace_certificate(certified, der, at=1 if spoiled == "chain-der" else 0)
    result = hash_signed(
        cli, tiny_workspace, certified, "--certificate-chain", authority.root, output=output
    )
    assert result.code == EXIT_INPUT, result.text
    assert message in result.err
    assert "Traceback" not in result.err


def test_the_manifest_output_may_not_be_the_signature_or_the_key(
    tiny_workspace: TinyWorkspace, cli: CliRunner, signature: Path, keys: KeyPair
) -> None:
    before = signature.read_bytes(), keys.public.read_bytes()
    for output in (signature, keys.public):
        result = hash_signed(
            cli, tiny_workspace, signature, "--public-key", keys.public, "--force", output=output
        )
        assert result.code == EXIT_INPUT, result.text
        assert "it is the input" in result.err
    assert (signature.read_bytes(), keys.public.read_bytes()) == before
