"""Property tests of the parsers that read trust roots: they refuse, they never crash.

A crash (any exception other than detserve's own) would exit 3 as an internal error instead of
naming the bad input; a parser that accepts something it cannot write back would make a trust
root that does not verify.
"""

from __future__ import annotations

import copy
import hashlib
import json
import string
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from detserve.canonical import MAX_EXACT_INTEGER, canonical_bytes
from detserve.engine_policy import ENGINE_OPTIONS, ENVIRONMENT_VARIABLES, EngineOption
from detserve.errors import DetserveError, ManifestError, ProfileError
from detserve.manifest import SnapshotManifest, check_relative_path, parse_manifest
from detserve.pinfile import replace_pin
from detserve.profile import SECRET_NAME_RE, LoadedProfile, load_profile, parse_profile
from detserve.prompts import (
    BUNDLE_FILE,
    PROMPTS_FILE,
    BootstrapRequest,
    DatasetSource,
    build_bundle,
    load_bundle,
)
from detserve.snapshot import build_manifest, write_manifest

from .committed import BUNDLE_DIR, TINY_CONFIG, TINY_MANIFEST

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# Each example of these writes and hashes the bundle's files.
FUZZ_FILES = settings(FUZZ, max_examples=100)

HEX = "0123456789abcdef"
LOWER = string.ascii_lowercase + string.digits
digests = st.text(alphabet=HEX, min_size=64, max_size=64)

# --- manifests ---------------------------------------------------------------------------------

segment = st.text(
    alphabet=st.characters(exclude_characters="/\\\n\r\x00", exclude_categories=["Cs"]),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))
safe_paths = st.lists(segment, min_size=1, max_size=4).map("/".join)
valid_manifests = st.dictionaries(safe_paths, digests, min_size=1, max_size=20).map(
    SnapshotManifest
)

manifest_like_lines = st.one_of(
    st.tuples(
        digests, st.sampled_from(["  ./", " *", "  ", " ./", "\t./"]), st.text(max_size=30)
    ).map(lambda t: "".join(t).encode("utf-8", "surrogatepass")),
    st.binary(max_size=100),
    st.sampled_from([b"", b"\r", b" ", b"./x", b"a" * 64 + b"  ./../x", b"a" * 64 + b"  .//x"]),
)
manifest_like = st.lists(manifest_like_lines, max_size=10).flatmap(
    lambda lines: st.sampled_from([b"\n", b"\r\n"]).map(
        lambda end: end.join(lines) + (end if lines else b"")
    )
)


@FUZZ
@given(data=st.one_of(st.binary(max_size=2000), manifest_like))
@example(data=TINY_MANIFEST.read_bytes())
@example(data=b"\n" * 5)
@example(data=b"a" * 64 + b"  ./\xff\xfe\n")
def test_parse_manifest_never_raises(data: bytes) -> None:
    parsed = parse_manifest(data)
    assert parsed.sha256 == hashlib.sha256(data).hexdigest()
    # Whatever was accepted is itself a valid manifest that writes back to a line per entry.
    for path in parsed.manifest.digests:
        assert check_relative_path(path) is None
    if not parsed.problems:
        assert parsed.manifest.to_bytes() == data


@FUZZ
@given(manifest=valid_manifests)
def test_valid_manifest_round_trips(manifest: SnapshotManifest) -> None:
    parsed = parse_manifest(manifest.to_bytes())
    assert parsed.problems == ()
    assert parsed.manifest == manifest


@FUZZ
@given(
    paths=st.lists(st.text(max_size=10), min_size=1, max_size=5),
    digest=digests,
)
@example(paths=["a\nb"], digest="0" * 64)
@example(paths=["a\rb"], digest="0" * 64)
@example(paths=["\udcff"], digest="0" * 64)
def test_any_constructible_manifest_round_trips(paths: list[str], digest: str) -> None:
    try:
        manifest = SnapshotManifest(dict.fromkeys(paths, digest))
    except ManifestError:
        return
    parsed = parse_manifest(manifest.to_bytes())
    assert parsed.problems == ()
    assert parsed.manifest == manifest


# --- profiles ----------------------------------------------------------------------------------

TINY: dict[str, Any] = json.loads(TINY_CONFIG.read_text(encoding="utf-8"))

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


def _leaf_paths(value: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(value, dict):
        paths = [prefix] if prefix else []
        for key, child in value.items():
            paths += _leaf_paths(child, (*prefix, key))
        return paths
    return [prefix]


TINY_PATHS = _leaf_paths(TINY)


@st.composite
def mutated_tiny(draw: st.DrawFn) -> bytes:
    """The tiny profile with one field replaced, removed or added, as any JSON value."""
    document = copy.deepcopy(TINY)
    path = draw(st.sampled_from(TINY_PATHS))
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    if action == "replace":
        parent[path[-1]] = draw(json_values)
    elif action == "remove":
        del parent[path[-1]]
    else:
        parent[draw(st.text(max_size=10))] = draw(json_values)
    return json.dumps(document, allow_nan=True).encode()


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=500),
        json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
        mutated_tiny(),
    )
)
@example(data=b"[" * 10_000)
@example(data=b'{"schema_version": ' + b"1" * 5000 + b"}")
@example(data=TINY_CONFIG.read_bytes().replace(b'"seed": 0', b'"seed": ' + b"9" * 5000))
@example(data=TINY_CONFIG.read_bytes().replace(b"0.0", b"NaN"))
@example(data=b"\xef\xbb\xbf" + TINY_CONFIG.read_bytes())
def test_parse_profile_raises_only_profile_error(data: bytes) -> None:
    try:
        parse_profile(data, source="fuzz")
    except ProfileError as exc:
        for line in exc.details:
            assert ": " in line, "every detail names a field path first"


env_names = st.builds(
    str.__add__,
    st.sampled_from(string.ascii_uppercase + "_"),
    st.text(alphabet=string.ascii_uppercase + string.digits + "_", max_size=15),
).filter(lambda n: not SECRET_NAME_RE.search(n) and n not in {"HF_HUB_OFFLINE", "HF_HOME"})
plain_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40).filter(
    lambda s: "install" not in s.lower() and "add" not in s.lower() and "sync" not in s.lower()
)


def _option_values(option: EngineOption) -> st.SearchStrategy[Any]:
    """Values an allowed engine option takes, by its kind."""
    if option.kind == "flag":
        return st.just(True)
    if option.kind == "int":
        return st.integers(0, 2**53 - 1)
    if option.kind == "number":
        return st.integers(0, 1000) | st.floats(0, 1000, allow_nan=False)
    return st.sampled_from(option.choices)


@st.composite
def valid_tiny(draw: st.DrawFn) -> dict[str, Any]:
    """The tiny profile with every field that has a range moved within it."""
    document = copy.deepcopy(TINY)
    document["name"] = draw(st.sampled_from(LOWER)) + draw(st.text(LOWER + "._-", max_size=20))
    document["description"] = draw(st.text(alphabet=st.characters(exclude_categories=["Cs"])))
    document["model"]["ref"] = draw(plain_text)
    document["model"]["revision"] = draw(
        st.none() | st.text(alphabet=HEX, min_size=40, max_size=40)
    )
    document["runtime"]["image"] = draw(
        st.none() | digests.map(lambda d: f"127.0.0.1:5000/detserve/vllm-cpu@sha256:{d}")
    )
    size = draw(st.integers(1, 99999))
    document["runtime"]["shm_size"] = f"{size}{draw(st.sampled_from(['', 'b', 'k', 'm', 'g']))}"
    document["runtime"]["port"] = draw(st.integers(1, 65535))
    # allowed variables only, each with a value of its documented form
    document["runtime"]["environment"] = {
        name: draw(st.from_regex(ENVIRONMENT_VARIABLES[name].pattern, fullmatch=True))
        for name in draw(st.sets(st.sampled_from(sorted(ENVIRONMENT_VARIABLES)), max_size=4))
    }
    document["runtime"]["startup_timeout_s"] = draw(st.integers(10, 7200))
    document["vllm"]["dtype"] = draw(st.sampled_from(["auto", "float32", "float16", "bfloat16"]))
    document["vllm"]["max_model_len"] = draw(st.integers(16, 1 << 20))
    document["vllm"]["max_num_seqs"] = draw(st.none() | st.integers(1, 1024))
    document["vllm"]["enforce_eager"] = draw(st.booleans())
    document["vllm"]["extra_args"] = {
        name: draw(_option_values(ENGINE_OPTIONS[name]))
        for name in draw(st.sets(st.sampled_from(sorted(ENGINE_OPTIONS)), max_size=3))
    }
    document["sampling"]["temperature"] = draw(st.sampled_from([0, 0.0, -0.0]))
    document["sampling"]["seed"] = draw(st.integers(0, MAX_EXACT_INTEGER))
    document["sampling"]["max_tokens"] = draw(st.integers(1, 65536))
    return document


@FUZZ
@given(document=valid_tiny(), indent=st.sampled_from([None, 0, 2, "\t"]))
def test_valid_profiles_round_trip(document: dict[str, Any], indent: int | str | None) -> None:
    profile = parse_profile(json.dumps(document, indent=indent).encode(), source="generated")
    again = parse_profile(profile.model_dump_json().encode(), source="dumped")
    assert again == profile
    assert again.model_dump_json() == profile.model_dump_json()
    # and its canonical form (RFC 8785) exists: the content hash of labels and sidecars
    assert LoadedProfile(profile, Path("p.json"), "").content_sha256


@FUZZ
@given(document=valid_tiny(), indent=st.sampled_from([None, 1, 2, 4]))
def test_replace_pin_changes_only_the_pin(document: dict[str, Any], indent: int | None) -> None:
    text = json.dumps(document, indent=indent, ensure_ascii=False)
    new = "f" * 40
    after = replace_pin(text, "model", "revision", new)
    expected = copy.deepcopy(document)
    expected["model"]["revision"] = new
    assert json.loads(after) == expected
    field = '"revision": ' + json.dumps(document["model"]["revision"])
    assert text.count(field) == 1
    assert after == text.replace(field, '"revision": ' + json.dumps(new))


# --- prompt bundles ----------------------------------------------------------------------------

CANONICAL_LINES = (BUNDLE_DIR / "prompts.jsonl").read_bytes().splitlines(keepends=True)

bundle_like = st.lists(
    st.one_of(
        st.sampled_from(CANONICAL_LINES),
        st.binary(max_size=80),
        st.builds(
            lambda i, n, p: (
                json.dumps(
                    {"id": i, "n_tokens": n, "prompt": p}, separators=(",", ":"), sort_keys=True
                )
                + "\n"
            ).encode("utf-8", "surrogatepass"),
            st.text(max_size=8),
            st.integers(-2, 10**6),
            st.text(max_size=20),
        ),
    ),
    max_size=70,
).map(b"".join)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fuzz-bundle")
    (directory / "bundle.json").write_bytes((BUNDLE_DIR / "bundle.json").read_bytes())
    return directory


def _pin(directory: Path) -> Path:
    """Pin the bundle's files as they are, so that only the parser can refuse them."""
    manifest = SnapshotManifest(
        {
            name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
            for name in ("bundle.json", "prompts.jsonl")
        }
    )
    pin = directory.parent / f"{directory.name}.sha256"
    pin.write_bytes(manifest.to_bytes())
    return pin


@FUZZ_FILES
@given(prompts=st.one_of(st.binary(max_size=3000), bundle_like))
@example(prompts=b"[" * 100_000 + b"\n")
@example(prompts=b'{"id":"a","n_tokens":' + b"9" * 5000 + b',"prompt":"x"}\n')
@example(prompts=b"".join(CANONICAL_LINES))
def test_load_bundle_raises_only_detserve_errors(bundle_dir: Path, prompts: bytes) -> None:
    # Random bytes are almost always refused, so the accepted branch below is rarely reached:
    # that accepted bundles round-trip is shown by test_written_bundles_round_trip.
    (bundle_dir / "prompts.jsonl").write_bytes(prompts)
    refused: DetserveError | None = None
    try:
        bundle = load_bundle(bundle_dir, _pin(bundle_dir))
    except DetserveError as exc:
        refused = exc
    if refused is None:
        assert len(bundle.prompts) == bundle.info.n_prompts
    else:
        # The hash matches, so only the parser may refuse: bad input, never a mismatch.
        assert refused.exit_code == 2, refused.diagnostics()


@FUZZ_FILES
@given(info=st.one_of(st.binary(max_size=500), json_values.map(lambda v: json.dumps(v).encode())))
def test_load_bundle_info_raises_only_detserve_errors(bundle_dir: Path, info: bytes) -> None:
    (bundle_dir / "prompts.jsonl").write_bytes(b"".join(CANONICAL_LINES))
    (bundle_dir / "bundle.json").write_bytes(info)
    try:
        with pytest.raises(DetserveError) as raised:
            load_bundle(bundle_dir, _pin(bundle_dir))
        assert raised.value.exit_code == 2
    finally:
        (bundle_dir / "bundle.json").write_bytes((BUNDLE_DIR / "bundle.json").read_bytes())


# Any text a bundle may hold: no lone surrogates (not UTF-8), nothing else excluded.
prompt_texts = st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40)


def _write_and_pin(prompts: list[str], root: Path) -> tuple[Path, Path]:
    """Write a bundle of ``prompts`` as `prompts bootstrap` does, and pin it as `hash` does."""
    root.mkdir()
    dataset = root / "dataset.jsonl"
    dataset.write_text("".join(json.dumps({"text": p}) + "\n" for p in prompts), encoding="utf-8")
    request = BootstrapRequest(
        dataset_path=dataset,
        source=DatasetSource(
            kind="local-file",
            name=dataset.name,
            revision=None,
            filename=dataset.name,
            file_sha256=hashlib.sha256(dataset.read_bytes()).hexdigest(),
            field="text",
        ),
        fmt="jsonl",
        n_prompts=len(prompts),
        # every prompt fits: the property is about writing and reading, not about the filter
        max_prompt_tokens=10_000,
    )
    directory = root / "bundle"
    build_bundle(load_profile(TINY_CONFIG), request, directory, force=False)
    pin = root / "bundle.sha256"
    write_manifest(build_manifest(directory, workers=1), pin, force=False)
    return directory, pin


@FUZZ_FILES
@given(prompts=st.lists(prompt_texts, min_size=1, max_size=8, unique=True))
@example(prompts=["\u2028", " ", "\r\n", "\x00", "\ufeff<|begin_of_text|>"])
def test_written_bundles_round_trip(prompts: list[str]) -> None:
    """A bundle detserve writes and pins loads back to the same prompts, and writes back the same.

    Written by the bootstrap's own writer (``prompts.build_bundle``) and pinned by `hash`'s
    (``snapshot.build_manifest``), then read by ``prompts.load_bundle``.
    """
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        directory, pin = _write_and_pin(prompts, root / "first")
        bundle = load_bundle(directory, pin)
        assert [p.prompt for p in bundle.prompts] == prompts
        assert [p.id for p in bundle.prompts] == [f"p{i:05d}" for i in range(len(prompts))]
        assert [p.sha256 for p in bundle.prompts] == [
            hashlib.sha256(p.encode("utf-8")).hexdigest() for p in prompts
        ]
        assert bundle.info.n_prompts == len(prompts)
        assert bundle.sha256 == hashlib.sha256(pin.read_bytes()).hexdigest()
        # What was read writes back to the very bytes that were pinned.
        assert (directory / PROMPTS_FILE).read_bytes() == b"".join(
            canonical_bytes(p.line_value()) for p in bundle.prompts
        )
        assert (directory / BUNDLE_FILE).read_bytes() == canonical_bytes(bundle.info.model_dump())
        # Writing the same prompts again gives the same files, so the same pin.
        again, pin_again = _write_and_pin(prompts, root / "second")
        for name in (BUNDLE_FILE, PROMPTS_FILE):
            assert (again / name).read_bytes() == (directory / name).read_bytes(), name
        assert pin_again.read_bytes() == pin.read_bytes()
        reloaded = load_bundle(again, pin_again)
        assert reloaded.prompts == bundle.prompts
        assert reloaded.sha256 == bundle.sha256
