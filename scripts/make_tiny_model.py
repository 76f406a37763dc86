#!/usr/bin/env python3
"""Build the tiny Llama test model, byte for byte the same on every run and every machine.

The model is ``detserve/tiny-llama``: a randomly initialised ``LlamaForCausalLM`` (2 layers, hidden
size 128, 2 attention heads of head_dim 64, 1 KV head, vocabulary 512, float32) small enough for
vLLM's CPU backend on 2 cores, with a byte-level BPE tokenizer of exactly 512 tokens so that every
id the model can emit decodes. Nothing is downloaded: every byte comes from this script.

What makes it reproducible
--------------------------
* Weights: ``numpy.random.default_rng(WEIGHT_SEED)`` (PCG64), normal with std 0.02, drawn in
  float64 in the fixed order of ``weight_layout()`` and rounded to little-endian float32; norm
  weights are ones and draw nothing. Written with ``safetensors.numpy.save`` and the fixed metadata
  ``{"format": "pt"}``.
* Tokenizer: the merges are computed here, not by ``tokenizers``' trainer, from the English corpus
  embedded below (public-domain texts). Words come from the ByteLevel pre-tokenizer; each step
  merges the most frequent adjacent pair, ties going to the smallest pair in code point order,
  until the BPE vocabulary holds 256 byte tokens + merges = 510 tokens. Ids 0-255 are the bytes
  0-255 (GPT-2's byte-to-unicode alphabet), merges follow in order, and the two special tokens take
  the last ids: ``<|begin_of_text|>`` = 510, ``<|end_of_text|>`` = 511. ``tokenizer.json`` is
  written from a dict here, so its bytes do not depend on the installed ``tokenizers`` version;
  ``tokenizers`` then loads it and must round-trip a few strings, or the build fails.
* Chat template: :data:`CHAT_TEMPLATE`, in ``tokenizer_config.json`` (``chat_template``).
* Every JSON file: sorted keys, indent 2, UTF-8, one trailing newline.

The bytes depend on this file and on three libraries' stable behaviour: numpy's PCG64 normal
stream, ``safetensors``' header layout and the ByteLevel pre-tokenizer's split. The same bytes
came out of numpy 2.4.6 + safetensors 0.8.0 + tokenizers 0.23.3 and of numpy 1.26.4 +
safetensors 0.4.3 + tokenizers 0.19.1; ``--check`` tells if another version changes a byte.

Hugging Face cache layout
-------------------------
Under ``--output-root`` (default ``artifacts/hf-cache`` in this repository), exactly as
``huggingface_hub`` lays out a cache::

    hub/models--detserve--tiny-llama/
        blobs/<sha256 of the content>          the real files
        snapshots/<REVISION>/<filename>        relative symlinks ../../blobs/<sha256>
        refs/main                              REVISION, no trailing newline

Point ``HF_HOME`` at the output root (or ``HF_HUB_CACHE`` at ``<root>/hub``) and load
``detserve/tiny-llama`` offline.

REVISION (40 hex digits) is derived from the content: it is the SHA-1 of the snapshot's SHA-256
manifest, i.e. of the UTF-8 bytes of the text made of one line
``<sha256 hex>  ./<relative path>\\n`` per file of the snapshot (two spaces), sorted by the bytes
of the path. That is coreutils ``sha256sum`` output, so::

    cd snapshots/<REVISION> && find . -type f -o -type l | LC_ALL=C sort | xargs sha256sum \\
        | sha1sum

prints REVISION again.

Usage
-----
``make_tiny_model.py`` builds the model into the output root and prints the revision on stdout.
If the model folder already exists with exactly these bytes, nothing is written; if it differs,
the script refuses unless ``--force``, which replaces the whole model folder.
``make_tiny_model.py --check`` rebuilds in a temporary directory and compares byte for byte with
what is at the output root: exit status 0 when identical, 1 with the differences listed otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save as save_safetensors
from tokenizers import Tokenizer
from tokenizers.pre_tokenizers import ByteLevel

REPO_ID = "detserve/tiny-llama"
REPO_FOLDER = "models--" + REPO_ID.replace("/", "--")
# Relative to the repository, not the working directory, so that it is the same from anywhere.
DEFAULT_OUTPUT_ROOT = Path(__file__).resolve().parent.parent / "artifacts" / "hf-cache"

WEIGHT_SEED = 20250101
WEIGHT_STD = 0.02

VOCAB_SIZE = 512
HIDDEN_SIZE = 128
INTERMEDIATE_SIZE = 256
NUM_LAYERS = 2
NUM_HEADS = 2
NUM_KV_HEADS = 1
HEAD_DIM = 64  # vLLM's CPU attention refuses head_dim 16; 64 runs.
MAX_POSITIONS = 512
RMS_NORM_EPS = 1e-5
ROPE_THETA = 10000.0

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
BOS_ID = VOCAB_SIZE - 2
EOS_ID = VOCAB_SIZE - 1
BPE_VOCAB_SIZE = VOCAB_SIZE - 2  # the specials live in added_tokens, outside the BPE vocabulary

# The chat template, in tokenizer_config.json. Its role markers are plain text (the vocabulary
# has room for no more special tokens), which the byte-level BPE tokenizes like any other text;
# the specials it writes (BOS, EOS) are the tokenizer's added tokens, matched whole. Expressions
# only, no block tags on their own lines: the output does not depend on Jinja's whitespace
# options (trim_blocks, lstrip_blocks), which renderers set differently.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('roles are system, user and assistant') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

ROUND_TRIP_SAMPLES = (
    "Hello",
    "Hello, world! It is a truth universally acknowledged.",
    "héllo wörld ✓",
    "  tabs\tand\nnew lines  ",
    "数字 1234567890 and emoji 🙂",
)

# Public-domain English: Austen (1813), Melville (1851), Dickens (1859), Lincoln (1863), the
# Declaration of Independence (1776). Changing one character changes the merges and the revision.
CORPUS = """\
It is a truth universally acknowledged, that a single man in possession of a good fortune, must be
in want of a wife. However little known the feelings or views of such a man may be on his first
entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families,
that he is considered the rightful property of some one or other of their daughters.

"My dear Mr. Bennet," said his lady to him one day, "have you heard that Netherfield Park is let
at last?" Mr. Bennet replied that he had not. "But it is," returned she; "for Mrs. Long has just
been here, and she told me all about it." Mr. Bennet made no answer. "Do you not want to know who
has taken it?" cried his wife impatiently. "You want to tell me, and I have no objection to
hearing it." This was invitation enough.

Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my
purse, and nothing particular to interest me on shore, I thought I would sail about a little and
see the watery part of the world. It is a way I have of driving off the spleen and regulating the
circulation. Whenever I find myself growing grim about the mouth; whenever it is a damp, drizzly
November in my soul; whenever I find myself involuntarily pausing before coffin warehouses, and
bringing up the rear of every funeral I meet; then, I account it high time to get to sea as soon
as I can.

It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of
foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of
Light, it was the season of Darkness, it was the spring of hope, it was the winter of despair, we
had everything before us, we had nothing before us, we were all going direct to Heaven, we were
all going direct the other way.

Four score and seven years ago our fathers brought forth on this continent, a new nation,
conceived in Liberty, and dedicated to the proposition that all men are created equal. Now we are
engaged in a great civil war, testing whether that nation, or any nation so conceived and so
dedicated, can long endure. We are met on a great battle-field of that war. We have come to
dedicate a portion of that field, as a final resting place for those who here gave their lives
that that nation might live. It is altogether fitting and proper that we should do this.

When in the Course of human events, it becomes necessary for one people to dissolve the political
bands which have connected them with another, and to assume among the powers of the earth, the
separate and equal station to which the Laws of Nature and of Nature's God entitle them, a decent
respect to the opinions of mankind requires that they should declare the causes which impel them
to the separation. We hold these truths to be self-evident, that all men are created equal, that
they are endowed by their Creator with certain unalienable Rights, that among these are Life,
Liberty and the pursuit of Happiness.
"""


class TinyModelError(Exception):
    """A failure this script reports in one message, with the exit status to use."""

    exit_code = 1

    def diagnostics(self) -> str:
        return str(self)


class SnapshotMismatch(TinyModelError):
    """What is at the output root is not what this script builds."""

    def __init__(self, model_dir: Path, differences: list[str], *, hint: str) -> None:
        self.model_dir = model_dir
        self.differences = differences
        self.hint = hint
        super().__init__(f"{model_dir} differs from what this script builds")

    def diagnostics(self) -> str:
        lines = [f"{self.model_dir} differs from what this script builds:"]
        lines += [f"  {line}" for line in self.differences]
        lines.append(self.hint)
        return "\n".join(lines)


# --------------------------------------------------------------------------------------- tokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes map to themselves, the rest to U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    mapping: dict[int, str] = {}
    shifted = 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + shifted)
            shifted += 1
    return mapping


def corpus_words(corpus: str) -> Counter[tuple[str, ...]]:
    """Split the corpus as the tokenizer will, into words of byte-level symbols, with counts."""
    pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=True)
    words: Counter[tuple[str, ...]] = Counter()
    for word, _offsets in pre_tokenizer.pre_tokenize_str(corpus):
        words[tuple(word)] += 1
    return words


def learn_merges(
    words: Counter[tuple[str, ...]], vocab: dict[str, int], vocab_size: int
) -> list[tuple[str, str]]:
    """Greedy BPE: merge the most frequent pair (ties: smallest pair) until ``vocab_size`` tokens.

    ``vocab`` is extended in place. A merge whose result is already a token adds a merge rule but
    no token; the loop runs until the vocabulary, not the merge list, is full.
    """
    merges: list[tuple[str, str]] = []
    corpus = dict(words)
    while len(vocab) < vocab_size:
        pair_counts: Counter[tuple[str, str]] = Counter()
        for word, count in corpus.items():
            for pair in itertools.pairwise(word):
                pair_counts[pair] += count
        if not pair_counts:
            raise TinyModelError(
                f"the embedded corpus yields only {len(vocab)} tokens, fewer than {vocab_size}"
            )
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        merged = best[0] + best[1]
        merges.append(best)
        if merged not in vocab:
            vocab[merged] = len(vocab)
        corpus = {_apply_merge(word, best, merged): count for word, count in corpus.items()}
    return merges


def _apply_merge(word: tuple[str, ...], pair: tuple[str, str], merged: str) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(merged)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def _added_token(token_id: int, content: str) -> dict[str, Any]:
    return {
        "content": content,
        "id": token_id,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }


def _byte_level(*, add_prefix_space: bool) -> dict[str, Any]:
    return {
        "add_prefix_space": add_prefix_space,
        "trim_offsets": True,
        "type": "ByteLevel",
        "use_regex": True,
    }


def tokenizer_document() -> dict[str, Any]:
    """The ``tokenizer.json`` document: byte-level BPE, BOS prepended, as Llama 3 does."""
    alphabet = bytes_to_unicode()
    library_alphabet = set(ByteLevel.alphabet())
    if set(alphabet.values()) != library_alphabet:
        raise TinyModelError("tokenizers' ByteLevel alphabet is not GPT-2's byte-to-unicode map")
    vocab = {alphabet[byte]: byte for byte in range(256)}
    merges = learn_merges(corpus_words(CORPUS), vocab, BPE_VOCAB_SIZE)
    bos_piece = {"SpecialToken": {"id": BOS_TOKEN, "type_id": 0}}
    return {
        "added_tokens": [_added_token(BOS_ID, BOS_TOKEN), _added_token(EOS_ID, EOS_TOKEN)],
        "decoder": _byte_level(add_prefix_space=True),
        "model": {
            "byte_fallback": False,
            "continuing_subword_prefix": None,
            "dropout": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "ignore_merges": False,
            # "left right" strings: no byte-level symbol is a space, and every tokenizers
            # release reads this form (the [left, right] form is 0.20 and later only).
            "merges": [f"{left} {right}" for left, right in merges],
            "type": "BPE",
            "unk_token": None,
            "vocab": vocab,
        },
        "normalizer": None,
        "padding": None,
        "post_processor": {
            "pair": [
                bos_piece,
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": BOS_TOKEN, "type_id": 1}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "single": [bos_piece, {"Sequence": {"id": "A", "type_id": 0}}],
            "special_tokens": {
                BOS_TOKEN: {"id": BOS_TOKEN, "ids": [BOS_ID], "tokens": [BOS_TOKEN]}
            },
            "type": "TemplateProcessing",
        },
        "pre_tokenizer": _byte_level(add_prefix_space=False),
        "truncation": None,
        "version": "1.0",
    }


def verify_tokenizer(tokenizer_json: bytes) -> None:
    """Load the tokenizer with ``tokenizers``; raise unless it has 512 ids that all decode."""
    try:
        tokenizer = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
    except Exception as exc:
        raise TinyModelError(f"tokenizers cannot load the generated tokenizer.json: {exc}") from exc
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size != VOCAB_SIZE:
        raise TinyModelError(f"tokenizer has {size} tokens, expected {VOCAB_SIZE}")
    ids = sorted(tokenizer.get_vocab(with_added_tokens=True).values())
    if ids != list(range(VOCAB_SIZE)):
        raise TinyModelError(f"tokenizer ids are not exactly 0..{VOCAB_SIZE - 1}")
    for token, token_id in ((BOS_TOKEN, BOS_ID), (EOS_TOKEN, EOS_ID)):
        if tokenizer.token_to_id(token) != token_id:
            raise TinyModelError(
                f"{token} has id {tokenizer.token_to_id(token)}, expected {token_id}"
            )
    for text in ROUND_TRIP_SAMPLES:
        encoding = tokenizer.encode(text)
        if encoding.ids[0] != BOS_ID:
            raise TinyModelError(f"encoding {text!r} does not start with {BOS_TOKEN}")
        decoded = tokenizer.decode(encoding.ids, skip_special_tokens=True)
        if decoded != text:
            raise TinyModelError(f"tokenizer round trip failed: {text!r} -> {decoded!r}")


# ----------------------------------------------------------------------------------------- weights


def weight_layout() -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes in draw order; Linear weights are [out_features, in_features]."""
    q_out = NUM_HEADS * HEAD_DIM
    kv_out = NUM_KV_HEADS * HEAD_DIM
    layout: list[tuple[str, tuple[int, ...]]] = [
        ("model.embed_tokens.weight", (VOCAB_SIZE, HIDDEN_SIZE))
    ]
    for layer in range(NUM_LAYERS):
        prefix = f"model.layers.{layer}"
        layout += [
            (f"{prefix}.input_layernorm.weight", (HIDDEN_SIZE,)),
            (f"{prefix}.self_attn.q_proj.weight", (q_out, HIDDEN_SIZE)),
            (f"{prefix}.self_attn.k_proj.weight", (kv_out, HIDDEN_SIZE)),
            (f"{prefix}.self_attn.v_proj.weight", (kv_out, HIDDEN_SIZE)),
            (f"{prefix}.self_attn.o_proj.weight", (HIDDEN_SIZE, q_out)),
            (f"{prefix}.post_attention_layernorm.weight", (HIDDEN_SIZE,)),
            (f"{prefix}.mlp.gate_proj.weight", (INTERMEDIATE_SIZE, HIDDEN_SIZE)),
            (f"{prefix}.mlp.up_proj.weight", (INTERMEDIATE_SIZE, HIDDEN_SIZE)),
            (f"{prefix}.mlp.down_proj.weight", (HIDDEN_SIZE, INTERMEDIATE_SIZE)),
        ]
    layout += [
        ("model.norm.weight", (HIDDEN_SIZE,)),
        ("lm_head.weight", (VOCAB_SIZE, HIDDEN_SIZE)),
    ]
    return layout


def weights_safetensors() -> bytes:
    rng = np.random.default_rng(WEIGHT_SEED)
    tensors: dict[str, np.ndarray] = {}
    for name, shape in weight_layout():
        if name.endswith("norm.weight"):
            tensors[name] = np.ones(shape, dtype="<f4")
        else:
            drawn = rng.normal(loc=0.0, scale=WEIGHT_STD, size=shape)
            tensors[name] = np.ascontiguousarray(drawn.astype("<f4"))
    return save_safetensors(tensors, metadata={"format": "pt"})


# ----------------------------------------------------------------------------------------- configs


def model_config() -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": HIDDEN_SIZE,
        "initializer_range": WEIGHT_STD,
        "intermediate_size": INTERMEDIATE_SIZE,
        "max_position_embeddings": MAX_POSITIONS,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": NUM_HEADS,
        "num_hidden_layers": NUM_LAYERS,
        "num_key_value_heads": NUM_KV_HEADS,
        "pretraining_tp": 1,
        "rms_norm_eps": RMS_NORM_EPS,
        # transformers 5 reads rope_parameters, 4.x reads rope_theta: both say the same.
        "rope_parameters": {"rope_theta": ROPE_THETA, "rope_type": "default"},
        "rope_scaling": None,
        "rope_theta": ROPE_THETA,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": VOCAB_SIZE,
    }


def generation_config() -> dict[str, Any]:
    # Token ids only: vLLM takes temperature, top_p, top_k, ... from here as request defaults,
    # and none must override what a request asks for.
    return {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID}


def tokenizer_config() -> dict[str, Any]:
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        # Keyed by id, and without the "id" field that tokenizer.json's entries carry.
        "added_tokens_decoder": {
            str(token_id): {k: v for k, v in _added_token(token_id, token).items() if k != "id"}
            for token_id, token in ((BOS_ID, BOS_TOKEN), (EOS_ID, EOS_TOKEN))
        },
        "bos_token": BOS_TOKEN,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": MAX_POSITIONS,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def special_tokens_map() -> dict[str, Any]:
    return {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN}


def json_bytes(document: Any) -> bytes:
    text = json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


# ---------------------------------------------------------------------------------------- snapshot


def snapshot_files() -> dict[str, bytes]:
    """Every file of the snapshot, by relative path."""
    tokenizer_json = json_bytes(tokenizer_document())
    verify_tokenizer(tokenizer_json)
    return {
        "config.json": json_bytes(model_config()),
        "generation_config.json": json_bytes(generation_config()),
        "model.safetensors": weights_safetensors(),
        "special_tokens_map.json": json_bytes(special_tokens_map()),
        "tokenizer.json": tokenizer_json,
        "tokenizer_config.json": json_bytes(tokenizer_config()),
    }


def sha256_manifest(files: dict[str, bytes]) -> bytes:
    """The snapshot's ``sha256sum`` manifest: ``<hex>  ./<path>`` lines sorted by path bytes."""
    lines = [
        f"{hashlib.sha256(files[path]).hexdigest()}  ./{path}\n"
        for path in sorted(files, key=lambda path: path.encode("utf-8"))
    ]
    return "".join(lines).encode("utf-8")


def revision_of(files: dict[str, bytes]) -> str:
    return hashlib.sha1(sha256_manifest(files)).hexdigest()


def write_model_folder(model_dir: Path, files: dict[str, bytes], revision: str) -> None:
    """Lay ``files`` out in ``model_dir`` as huggingface_hub does; ``model_dir`` must not exist."""
    blobs = model_dir / "blobs"
    snapshot = model_dir / "snapshots" / revision
    refs = model_dir / "refs"
    for directory in (blobs, snapshot, refs):
        directory.mkdir(parents=True)
    for path, content in sorted(files.items()):
        digest = hashlib.sha256(content).hexdigest()
        blob = blobs / digest
        blob.write_bytes(content)
        blob.chmod(0o644)
        link = snapshot / path
        link.parent.mkdir(parents=True, exist_ok=True)
        depth = len(Path(path).parts) + 1  # up through snapshots/<revision>/<subfolders>
        link.symlink_to(Path(*([".."] * depth), "blobs", digest))
    (refs / "main").write_bytes(revision.encode("ascii"))


# ------------------------------------------------------------------------------------- comparison


def tree_entries(root: Path) -> dict[str, tuple[str, bytes]]:
    """Every entry under ``root`` without following links: kind and content or link target."""
    entries: dict[str, tuple[str, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                entries[relative] = ("symlink", str(path.readlink()).encode("utf-8"))
            elif path.is_dir():
                entries[relative] = ("directory", b"")
            elif path.is_file():
                entries[relative] = ("file", path.read_bytes())
            else:
                entries[relative] = ("special file", b"")
    return entries


def _describe(entry: tuple[str, bytes]) -> str:
    kind, payload = entry
    if kind == "symlink":
        return f"symlink -> {payload.decode('utf-8', 'replace')}"
    if kind == "file":
        return f"file, {len(payload)} bytes, sha256 {hashlib.sha256(payload).hexdigest()}"
    return kind


def tree_differences(expected: Path, actual: Path) -> list[str]:
    """Differences of ``actual`` from ``expected``, sorted: missing, extra, changed."""
    want = tree_entries(expected)
    have = tree_entries(actual) if actual.is_dir() else {}
    missing = [
        f"missing: {path} (expected {_describe(want[path])})"
        for path in sorted(want.keys() - have.keys())
    ]
    extra = [
        f"extra: {path} ({_describe(have[path])})" for path in sorted(have.keys() - want.keys())
    ]
    changed = [
        f"changed: {path}: expected {_describe(want[path])}, found {_describe(have[path])}"
        for path in sorted(want.keys() & have.keys())
        if want[path] != have[path]
    ]
    return missing + extra + changed


# ----------------------------------------------------------------------------------------- actions


def check(output_root: Path) -> str:
    """Rebuild in a temporary directory; raise unless ``output_root`` holds exactly the same."""
    files = snapshot_files()
    revision = revision_of(files)
    model_dir = output_root / "hub" / REPO_FOLDER
    with tempfile.TemporaryDirectory(prefix="tiny-llama-check-") as scratch:
        fresh = Path(scratch) / REPO_FOLDER
        write_model_folder(fresh, files, revision)
        if not model_dir.is_dir():
            raise TinyModelError(f"{model_dir} does not exist; build it first (without --check)")
        differences = tree_differences(fresh, model_dir)
    if differences:
        raise SnapshotMismatch(
            model_dir, differences, hint=f"expected revision {revision}; rebuild with --force"
        )
    return revision


def build(output_root: Path, *, force: bool) -> str:
    """Write the model folder under ``output_root``; raise rather than replace different bytes."""
    files = snapshot_files()
    revision = revision_of(files)
    hub = output_root / "hub"
    model_dir = hub / REPO_FOLDER
    hub.mkdir(parents=True, exist_ok=True)
    # Staged next to the target so that the final rename is atomic on one file system.
    staging = Path(tempfile.mkdtemp(prefix=f".{REPO_FOLDER}.", suffix=".partial", dir=hub))
    try:
        fresh = staging / REPO_FOLDER
        write_model_folder(fresh, files, revision)
        if model_dir.is_symlink() or model_dir.exists():
            differences = tree_differences(fresh, model_dir)
            if not differences:
                print(f"{model_dir} is already up to date", file=sys.stderr)
                return revision
            if not force:
                raise SnapshotMismatch(
                    model_dir,
                    differences,
                    hint="refusing to overwrite it; pass --force to replace the whole folder",
                )
            print(f"--force: replacing {model_dir}", file=sys.stderr)
            model_dir.rename(staging / "replaced")
        fresh.rename(model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return revision


def parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Build the deterministic tiny Llama test model in Hugging Face cache layout."
    )
    parser.add_argument(
        "--output-root",
        type=Path,
        default=DEFAULT_OUTPUT_ROOT,
        help="cache root (HF_HOME); the model goes under hub/ (default: artifacts/hf-cache here)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="rebuild in a temporary directory and compare byte for byte with the output root",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing model folder whose bytes differ (it is deleted)",
    )
    parser.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    return parser.parse_args(None if argv is None else list(argv))


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check and args.force:
        print("error: --check never writes; --force makes no sense with it", file=sys.stderr)
        return 2
    try:
        revision = (
            check(args.output_root) if args.check else build(args.output_root, force=args.force)
        )
    except TinyModelError as exc:
        if args.verbose:
            raise
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        return exc.exit_code
    if args.check:
        print(f"{args.output_root / 'hub' / REPO_FOLDER} matches", file=sys.stderr)
    print(revision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
