"""What a verified model signature says: its in-toto statement, read strictly.

The statement of an OpenSSF model signature (predicate ``https://model_signing/signature/v1.0``)
lists every file of the model, or every shard of every file, with its digest, and the
serialization that made them: whole files or shards of a fixed size, the hash algorithm, the
paths the signer ignored. :func:`read_statement` turns a statement whose signature already
verified into a :class:`SignedModel`.

Invariants:

* Stricter than the library: every resource in the algorithm its serialization declares, with a
  digest of that algorithm's length; no resource twice; shards contiguous from byte 0, each of
  the declared size but the last; every path one a detserve manifest can hold; at least one
  resource (a signature over nothing pins nothing). The library's own reading of the statement
  (``dsse_payload_to_manifest``) must accept it too: it checks the subject's root digest.
* Any of these failing is bad input (exit 2): the signature is authentic, but its content is not
  a model manifest detserve can use. Pre-1.0 signatures (``model_signing`` 0.2, predicate
  ``https://model_signing/Digests/v0.1``) carry no serialization and are refused.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from detserve.errors import ModelSignatureError, bounded
from detserve.manifest import check_relative_path

_STATEMENT_TYPE: Final = "https://in-toto.io/Statement/v1"
_PREDICATE_TYPE: Final = "https://model_signing/signature/v1.0"
_HEX: Final = re.compile(r"[0-9a-fA-F]+")
_OFFSET: Final = re.compile(r"0|[1-9][0-9]*")
#: digest length in bytes of each algorithm a serialization may declare, per method
_FILE_ALGORITHMS: Final = {"sha256": 32, "blake2b": 64, "blake3": 32}
_SHARD_ALGORITHMS: Final = {"sha256": 32, "blake2b": 64}


@dataclass(frozen=True)
class SignedFile:
    """What a verified signature says about one file."""

    #: hex digests: one for the whole file, or one per shard in file order
    digests: tuple[str, ...]
    #: the file's size the shards add up to; None when the digest is of the whole file
    size: int | None


@dataclass(frozen=True)
class SignedModel:
    """The content of a model signature that verified; every field is signed by the publisher."""

    files: Mapping[str, SignedFile]
    #: "sha256", "blake2b" or "blake3"
    hash_type: str
    #: bytes per shard for a sharded signature; None when each digest covers a whole file
    shard_size: int | None
    #: paths the signer left out (git files, the signature itself, what it was told to ignore)
    ignore_paths: tuple[str, ...]
    model_name: str
    #: who signed, as verified: the key's fingerprint, or the certificate's subject and fingerprint
    signer: str
    signature: Path
    signature_sha256: str
    #: what the library printed or logged while verifying
    notes: tuple[str, ...] = ()

    @property
    def method(self) -> str:
        return "files" if self.shard_size is None else "shards"

    def stated_sha256(self, path: str) -> str | None:
        """The file's sha256 when the signature states it (whole-file sha256 digests)."""
        signed = self.files.get(path)
        if signed is None or self.hash_type != "sha256" or self.shard_size is not None:
            return None
        return signed.digests[0]

    def ignored_by(self, path: str) -> str | None:
        """The signer's ignore path that leaves ``path`` out, if any."""
        return next((p for p in self.ignore_paths if path == p or path.startswith(p + "/")), None)

    def as_json(self) -> dict[str, object]:
        return {
            "path": str(self.signature),
            "sha256": self.signature_sha256,
            "signer": self.signer,
            "method": self.method,
            "hash_type": self.hash_type,
            "shard_size": self.shard_size,
            "files": len(self.files),
            "notes": list(self.notes),
        }


def read_statement(
    statement: dict[str, Any],
    shown: str,
    *,
    signature: Path,
    signer: str,
    data: bytes,
    notes: tuple[str, ...],
) -> SignedModel:
    """What the verified ``statement`` says; any content detserve cannot use is exit 2.

    ``shown`` names the signature in messages, ``data`` are its bytes, ``signer`` who verified.
    """
    from model_signing._signing import signing

    def refuse(why: str) -> ModelSignatureError:
        return ModelSignatureError(
            f"model signature {shown} verified, but its content is not a model manifest "
            f"detserve can use: {bounded(why, 500)}"
        )

    if statement.get("_type") != _STATEMENT_TYPE:
        raise refuse(f"statement type {statement.get('_type')!r}, expected {_STATEMENT_TYPE!r}")
    if statement.get("predicateType") != _PREDICATE_TYPE:
        raise refuse(
            f"predicate type {statement.get('predicateType')!r}, expected {_PREDICATE_TYPE!r} "
            "(signatures of model_signing before 1.0 are not supported)"
        )
    try:
        read = _read_predicate(statement["predicate"])
        # The library's own reading: it checks the subject's root digest over the resources.
        signing.dsse_payload_to_manifest(statement)
        subjects = statement["subject"]
        model_name = subjects[0]["name"] if isinstance(subjects[0]["name"], str) else ""
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise refuse(str(exc) or type(exc).__name__) from exc
    return SignedModel(
        files=read.files,
        hash_type=read.hash_type,
        shard_size=read.shard_size,
        ignore_paths=read.ignore_paths,
        model_name=bounded(model_name, 200),
        signer=signer,
        signature=signature,
        signature_sha256=hashlib.sha256(data).hexdigest(),
        notes=notes,
    )


@dataclass(frozen=True)
class _Predicate:
    files: dict[str, SignedFile]
    hash_type: str
    shard_size: int | None
    ignore_paths: tuple[str, ...]


def _read_predicate(predicate: dict[str, Any]) -> _Predicate:
    """The serialization and resources, strictly; raises ValueError naming the first problem."""
    serialization = predicate["serialization"]
    method, hash_type = serialization["method"], serialization["hash_type"]
    if method == "files":
        lengths, shard_size = _FILE_ALGORITHMS, None
        algorithm = hash_type
    elif method == "shards":
        lengths, shard_size = _SHARD_ALGORITHMS, _shard_size(serialization["shard_size"])
        algorithm = f"{hash_type}-sharded-{shard_size}"
    else:
        raise ValueError(f"serialization method {method!r} is neither 'files' nor 'shards'")
    if hash_type not in lengths:
        raise ValueError(f"hash type {hash_type!r} for {method}: expected one of {sorted(lengths)}")
    ignore_paths = serialization.get("ignore_paths", [])
    if not isinstance(ignore_paths, list) or not all(isinstance(p, str) for p in ignore_paths):
        raise ValueError("ignore_paths is not a list of strings")
    resources = predicate["resources"]
    if not isinstance(resources, list) or not resources:
        raise ValueError("it lists no resources: it signs nothing")
    pieces: dict[str, list[tuple[int, int, str]]] = {}
    for resource in resources:
        if not isinstance(resource, dict) or set(resource) != {"name", "algorithm", "digest"}:
            raise ValueError(f"resource {resource!r} is not {{name, algorithm, digest}}")
        name, digest = resource["name"], resource["digest"]
        if resource["algorithm"] != algorithm:
            raise ValueError(f"resource {name!r} is in {resource['algorithm']!r}, not {algorithm}")
        if (
            not isinstance(digest, str)
            or not _HEX.fullmatch(digest)
            or (len(digest) != 2 * lengths[hash_type])
        ):
            raise ValueError(f"resource {name!r}: digest {digest!r} is not {hash_type}")
        path, start, end = _split_name(name, sharded=shard_size is not None)
        why = check_relative_path(path)
        if why:
            raise ValueError(f"resource {name!r}: {why}")
        pieces.setdefault(path, []).append((start, end, digest.lower()))
    files = {path: _signed_file(path, items, shard_size) for path, items in pieces.items()}
    return _Predicate(files, hash_type, shard_size, tuple(ignore_paths))


def _shard_size(value: object) -> int:
    # The library writes the predicate through a protobuf Struct, whose numbers are doubles:
    # 1000000000 arrives as 1000000000.0. An integral value below 2**53 is exact.
    if isinstance(value, float) and value.is_integer() and 0 < value < 2**53:
        value = int(value)
    if type(value) is not int or value <= 0:
        raise ValueError(f"shard size {value!r} is not a positive integer")
    return value


def _split_name(name: object, *, sharded: bool) -> tuple[str, int, int]:
    """``(path, start, end)`` of a resource name; a whole file's span is ``(0, 0)``."""
    if not isinstance(name, str):
        raise ValueError(f"resource name {name!r} is not a string")
    if not sharded:
        return name, 0, 0
    parts = name.split(":")  # as the library splits it: a sharded path cannot hold a colon
    if len(parts) != 3 or not all(_OFFSET.fullmatch(part) for part in parts[1:]):
        raise ValueError(f"shard {name!r} is not PATH:START:END")
    return parts[0], int(parts[1]), int(parts[2])


def _signed_file(
    path: str, items: list[tuple[int, int, str]], shard_size: int | None
) -> SignedFile:
    if shard_size is None:
        if len(items) != 1:
            raise ValueError(f"{path!r} is listed twice")
        return SignedFile(digests=(items[0][2],), size=None)
    items.sort()
    offset = 0
    for start, end, _ in items:
        # The library's shards: [0, s), [s, 2s), ... and a last one ending at the file's end.
        if start != offset or not (0 < end - start <= shard_size):
            raise ValueError(f"the shards of {path!r} are not contiguous from byte 0")
        if end - start < shard_size and end != items[-1][1]:
            raise ValueError(f"a shard of {path!r} before its last is short")
        offset = end
    return SignedFile(digests=tuple(digest for _, _, digest in items), size=offset)
