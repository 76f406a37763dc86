"""An independent checker of detserve run logs, transcripts and attestations, written from
docs/spec/run-log.md alone (Python's standard library and ``rfc8785``; it never imports
detserve), so that where it and detserve disagree, the specification has a gap.

    python scripts/spec_check.py run-log FILE
    python scripts/spec_check.py segment FILE [--allow-cut]
    python scripts/spec_check.py directory DIR [--allow-cut]
    python scripts/spec_check.py pair RUN_A RUN_B
    python scripts/spec_check.py claim --envelope E --public-key K --run-log L
    python scripts/spec_check.py vectors [docs/spec/vectors/index.json] [--json]

Each check prints its verdict, exit status and the rule that failed (section 1.1 and 10 of the
specification) as one JSON object, and exits with that status. ``vectors`` runs every vector of
a manifest and exits 1 unless each one has its expected verdict, exit status and rule.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from spec_check_claim import verify_claim
from spec_check_compare import compare, verify_directory
from spec_check_lines import Refused, verify_run_log, verify_segment

DEFAULT_MANIFEST: Final = (
    Path(__file__).resolve().parent.parent / "docs" / "spec" / "vectors" / "index.json"
)


@dataclass(frozen=True)
class Result:
    verdict: str
    exit: int
    rule: str | None = None
    message: str = ""
    keyid: str | None = None


def check(kind: str, files: dict[str, Path], options: dict[str, Any]) -> Result:
    """One check of section 11's kinds; never raises for a bad input, which is a verdict."""
    try:
        if kind == "run-log":
            verify_run_log(files["log"])
            return Result("valid", 0)
        if kind == "segment":
            segment = verify_segment(files["log"], allow_cut=bool(options.get("allow_cut")))
            return Result("cut" if segment.cut else "valid", 0)
        if kind == "directory":
            verdict = verify_directory(files["directory"], allow_cut=bool(options.get("allow_cut")))
            return Result(verdict, 0)
        if kind == "pair":
            verdict, code, rule = compare(files["run_a"], files["run_b"])
            return Result(verdict, code, rule)
        if kind == "claim":
            keyid = verify_claim(files["envelope"], files["public_key"], files["run_log"])
            return Result("verified", 0, keyid=keyid)
    except Refused as exc:
        return Result(exc.verdict, exc.exit_code, exc.rule, exc.message)
    except OSError as exc:
        return Result("invalid", 2, None, f"cannot read: {exc}")
    raise ValueError(f"unknown kind {kind!r}")


def run_vectors(manifest: Path) -> list[dict[str, Any]]:
    """Every vector of ``manifest`` checked, with what was expected and whether it was given."""
    document = json.loads(manifest.read_text(encoding="utf-8"))
    results = []
    for vector in document["vectors"]:
        files = {role: manifest.parent / path for role, path in vector["files"].items()}
        result = check(vector["kind"], files, vector["options"])
        expect = vector["expect"]
        agrees = (result.verdict, result.exit, result.rule) == (
            expect["verdict"],
            expect["exit"],
            expect["rule"],
        ) and expect.get("keyid", result.keyid) == result.keyid
        results.append(
            {"name": vector["name"], "agrees": agrees, "expect": expect, "result": asdict(result)}
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("run-log", "segment", "directory"):
        sub = commands.add_parser(name)
        sub.add_argument("path", type=Path)
        if name != "run-log":
            sub.add_argument("--allow-cut", action="store_true")
    pair = commands.add_parser("pair")
    pair.add_argument("run_a", type=Path)
    pair.add_argument("run_b", type=Path)
    claim = commands.add_parser("claim")
    for option in ("--envelope", "--public-key", "--run-log"):
        claim.add_argument(option, type=Path, required=True)
    vectors = commands.add_parser("vectors")
    vectors.add_argument("manifest", type=Path, nargs="?", default=DEFAULT_MANIFEST)
    vectors.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "vectors":
        results = run_vectors(args.manifest)
        if args.json:
            print(json.dumps(results, indent=1))
        else:
            for entry in results:
                if not entry["agrees"]:
                    print(
                        f"DISAGREES {entry['name']}: expected {entry['expect']}, checked "
                        f"{entry['result']}"
                    )
            print(f"{sum(e['agrees'] for e in results)} of {len(results)} vectors as expected")
        return 0 if all(entry["agrees"] for entry in results) else 1
    if args.command in ("run-log", "segment"):
        kind, files = args.command, {"log": args.path}
    elif args.command == "directory":
        kind, files = "directory", {"directory": args.path}
    elif args.command == "pair":
        kind, files = "pair", {"run_a": args.run_a, "run_b": args.run_b}
    else:
        kind = "claim"
        files = {"envelope": args.envelope, "public_key": args.public_key, "run_log": args.run_log}
    result = check(kind, files, {"allow_cut": getattr(args, "allow_cut", False)})
    print(json.dumps(asdict(result)))
    return result.exit


if __name__ == "__main__":
    sys.exit(main())
