"""A publisher for the model-signature tests: keys, a CA, and signatures made with model_signing.

The publisher signs the tiny model as it publishes it: a plain folder of regular files (the
model repository), not the Hugging Face cache that detserve later checks. Signatures come from
``model_signing``'s own API (elliptic-curve key or certificate forms); :func:`sign_statement`
signs a hand-made in-toto statement with the same key and envelope, for content the library
would never write.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from .committed import TINY_SNAPSHOT, CliResult, CliRunner, TinyWorkspace

PAYLOAD_TYPE = "application/vnd.in-toto+json"
MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"


def write_private_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def public_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key: ec.EllipticCurvePrivateKey

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(public_pem(self.key)).hexdigest()

    @classmethod
    def make(cls, folder: Path, name: str, curve: ec.EllipticCurve | None = None) -> KeyPair:
        folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(curve or ec.SECP256R1())
        public = folder / f"{name}.pub"
        public.write_bytes(public_pem(key))
        return cls(write_private_key(key, folder / f"{name}.pem"), public, key)


def publish_model(folder: Path) -> Path:
    """The tiny model as its publisher holds it: regular files, no links."""
    folder.mkdir(parents=True)
    for entry in sorted(TINY_SNAPSHOT.iterdir()):
        shutil.copyfile(entry, folder / entry.name)  # follows the cache's link to the blob
    return folder


def sign_with_key(
    model: Path,
    signature: Path,
    keys: KeyPair,
    *,
    shard_size: int | None = None,
    algorithm: str = "sha256",
    ignore: tuple[str, ...] = (),
) -> Path:
    """Sign ``model`` with model_signing's elliptic-curve key signer."""
    import model_signing

    hashing = model_signing.hashing.Config()  # type: ignore[no-untyped-call]
    if shard_size is None:
        hashing.use_file_serialization(hashing_algorithm=algorithm)  # type: ignore[arg-type]
    else:
        hashing.use_shard_serialization(
            hashing_algorithm=algorithm,  # type: ignore[arg-type]
            shard_size=shard_size,
        )
    if ignore:
        hashing.set_ignored_paths(paths=[model / path for path in ignore])
    config = model_signing.signing.Config()  # type: ignore[no-untyped-call]
    config.use_elliptic_key_signer(private_key=keys.private)
    config.set_hashing_config(hashing).sign(model, signature)
    return signature


def bundle_of(signature: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(signature.read_text(encoding="utf-8"))
    return document


def statement_of(signature: Path) -> dict[str, Any]:
    payload = base64.b64decode(bundle_of(signature)["dsseEnvelope"]["payload"])
    statement: dict[str, Any] = json.loads(payload)
    return statement


def root_digest(resources: list[dict[str, str]]) -> str:
    """The subject digest model_signing writes: sha256 over the resources' digest bytes."""
    return hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()


def pae(payload: bytes) -> bytes:
    return b" ".join(
        [f"DSSEv1 {len(PAYLOAD_TYPE)} {PAYLOAD_TYPE} {len(payload)}".encode(), payload]
    )


def sign_statement(
    statement: dict[str, Any] | bytes, keys: KeyPair, signature: Path, *, fix_root: bool = True
) -> Path:
    """Sign a statement as model_signing's key signer does (same envelope, same bundle)."""
    if isinstance(statement, dict):
        if fix_root:
            resources = statement["predicate"]["resources"]
            statement["subject"][0]["digest"]["sha256"] = root_digest(resources)
        payload = json.dumps(statement).encode()
    else:
        payload = statement
    sig = keys.key.sign(pae(payload), ec.ECDSA(hashes.SHA256()))
    bundle = {
        "mediaType": MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": keys.fingerprint}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}],
        },
    }
    signature.write_text(json.dumps(bundle), encoding="utf-8")
    return signature


# --- certificates ----------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
    ca: bool = False,
    signing: bool = True,
) -> x509.Certificate:
    """A certificate for ``key``, self-signed or issued by ``issuer`` (name, key)."""
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=signing,
                content_commitment=False,
                key_encipherment=not signing and not ca,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return builder.sign(issuer_key, hashes.SHA256())


def write_certificate(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@dataclass(frozen=True)
class Authority:
    """A publisher's CA and a signing certificate it issued."""

    root: Path
    leaf_key: Path
    leaf: Path

    @classmethod
    def make(cls, folder: Path, name: str, *, signing: bool = True) -> Authority:
        folder.mkdir(parents=True, exist_ok=True)
        root_key = ec.generate_private_key(ec.SECP256R1())
        root = certificate(f"{name} root CA", root_key, ca=True)
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        leaf = certificate(
            f"{name} model signer", leaf_key, issuer=(f"{name} root CA", root_key), signing=signing
        )
        return cls(
            root=write_certificate(root, folder / f"{name}-root.pem"),
            leaf_key=write_private_key(leaf_key, folder / f"{name}-leaf.key"),
            leaf=write_certificate(leaf, folder / f"{name}-leaf.pem"),
        )


def sign_with_certificate(model: Path, signature: Path, authority: Authority) -> Path:
    import model_signing

    model_signing.signing.Config().use_certificate_signer(  # type: ignore[no-untyped-call]
        private_key=authority.leaf_key,
        signing_certificate=authority.leaf,
        certificate_chain=[authority.root],
    ).sign(model, signature)
    return signature


# --- running detserve ------------------------------------------------------------------------


def hash_signed(
    cli: CliRunner, ws: TinyWorkspace, signature: Path, *trust: str | Path, output: Path
) -> CliResult:
    return cli(
        "hash",
        "--snapshot",
        ws.snapshot,
        "--manifest-output",
        output,
        "--model-signature",
        signature,
        *trust,
    )


def assert_refused(result: CliResult, code: int, output: Path, *messages: str) -> None:
    """The command exited ``code``, said each of ``messages`` and wrote nothing at ``output``."""
    assert result.code == code, result.text
    for message in messages:
        assert message in result.err, result.err
    assert not output.exists(), f"{output} was written"


def verify_signed(
    cli: CliRunner, ws: TinyWorkspace, signature: Path, *trust: str | Path, manifest: Path
) -> CliResult:
    return cli(
        "verify",
        "--snapshot",
        ws.snapshot,
        "--manifest",
        manifest,
        "--model-signature",
        signature,
        *trust,
    )


def details(result: CliResult) -> list[str]:
    return [line[2:] for line in result.err.splitlines() if line.startswith("  ")]
