"""Write the test vectors of the run-log specification (docs/spec/run-log.md) and their manifest.

    python scripts/make_spec_vectors.py            # (re)write docs/spec/vectors/
    python scripts/make_spec_vectors.py --check    # exit 1 unless the committed files are these

Every file is built from plain dicts with ``rfc8785`` (signatures with ``cryptography``), never
through detserve, so that the vectors say what the specification says. The output is
deterministic: Ed25519 signatures are, and ECDSA ones use RFC 6979 nonces.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Final

from spec_vectors_base import FORMAT_VERSION, VectorSet
from spec_vectors_chains import add_directories
from spec_vectors_claims import add_claims
from spec_vectors_logs import add_run_log_pairs, add_run_logs
from spec_vectors_replays import add_segment_pairs
from spec_vectors_requests import add_requests
from spec_vectors_segments import add_segments
from spec_vectors_transcripts import valid_segment

VECTORS_DIR: Final = Path(__file__).resolve().parent.parent / "docs" / "spec" / "vectors"
MANIFEST: Final = "index.json"


def build() -> dict[str, bytes]:
    """Every vector file and the manifest, by path relative to the vectors directory."""
    vs = VectorSet()
    segment = b"".join(valid_segment())
    add_run_logs(vs, segment)
    add_segments(vs)
    add_requests(vs, valid_segment())
    add_directories(vs)
    add_run_log_pairs(vs, segment)
    add_segment_pairs(vs)
    add_claims(vs)
    manifest = {
        "format": "detserve-run-log-spec-vectors",
        "format_version": FORMAT_VERSION,
        "specification": "../run-log.md",
        "vectors": vs.entries,
    }
    files = dict(vs.files)
    files[MANIFEST] = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode()
    return files


def _on_disk(directory: Path) -> dict[str, bytes]:
    if not directory.is_dir():
        return {}
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--output-dir", type=Path, default=VECTORS_DIR)
    args = parser.parse_args(argv)
    files = build()
    existing = _on_disk(args.output_dir)
    if args.check:
        stale = sorted(
            name for name in files.keys() | existing.keys() if files.get(name) != existing.get(name)
        )
        for name in stale:
            print(f"not current: {name}", file=sys.stderr)
        return 1 if stale else 0
    for name in sorted(existing.keys() - files.keys()):
        (args.output_dir / name).unlink()
    for name, data in files.items():
        path = args.output_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if existing.get(name) != data:
            path.write_bytes(data)
    for directory in sorted(args.output_dir.rglob("*"), reverse=True):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    print(
        f"{len(files) - 1} files, {len(json.loads(files[MANIFEST])['vectors'])} vectors "
        f"in {args.output_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
