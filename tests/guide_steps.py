"""The commands of docs/serve-your-model.md, read out of the page, for the tests that run them.

A fenced block whose info string is ``sh guide:STEP`` is a step the guide's test runs, in
:data:`GUIDE_STEPS` order; its lines are plain commands (``detserve``, and ``mkdir``, ``cp`` and
``git`` for publishing), one a line, with ``\\`` continuations and ``#`` comments, and no shell
syntax (no variables, pipes, redirections or ``&&``), so that what the test runs is exactly what
the page shows. Any other ``sh`` block is for the GPU host only and never run here; its
``detserve`` commands are still parsed with the real command-line parser (tests/unit/test_guide.py).

:class:`TinyTarget` turns a guide command into the one the test runs on the tiny model served by
olah: the few substitutions the guide itself lists, and nothing else.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
GUIDE = REPO_ROOT / "docs" / "serve-your-model.md"

#: the guide's runnable steps, in the page's order
GUIDE_STEPS = (
    "init",
    "doctor-host",
    "lock-model",
    "download",
    "hash",
    "lock-image",
    "bundle",
    "run",
    "doctor",
    "sample",
    "attest",
    "publish",
    "commit",
    "stop",
    "verifier-download",
    "verify-claim",
    "replay",
    "eval-determinism",
)
#: programs a runnable step may call besides detserve (publishing the claim)
PUBLISHING_PROGRAMS = frozenset({"mkdir", "cp", "git"})
#: what the guide names, as the guide's section "What was run, and what only read" lists it
GUIDE_MODEL = "Qwen/Qwen3-8B"
GUIDE_DEVICE = "--device nvidia --gpus 1"
GUIDE_NAME = "qwen3-8b"
REVISION_WORD = "REVISION"

_FENCE = re.compile(r"^```(?P<info>.*)$")
#: what a shell would read as an operator when not quoted
_OPERATORS = "();<>|&"


class GuideError(AssertionError):
    """The guide's markdown is not what its tests can run."""


@dataclass(frozen=True)
class GuideBlock:
    """One fenced ``sh`` block: its step (None: GPU host only), first line, and commands."""

    step: str | None
    line: int
    commands: tuple[str, ...]


def _logical_lines(body: list[str]) -> list[str]:
    """Join ``\\`` continuations; drop blank and comment-only lines."""
    lines: list[str] = []
    pending = ""
    for raw in body:
        text = pending + raw.rstrip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        if text.strip() and not text.lstrip().startswith("#"):
            lines.append(text.strip())
    if pending:
        raise GuideError(f"a continuation that never ends: {pending!r}")
    return lines


def guide_blocks(text: str | None = None) -> list[GuideBlock]:
    """Every ``sh`` block of the guide, in order."""
    source = text if text is not None else GUIDE.read_text(encoding="utf-8")
    blocks: list[GuideBlock] = []
    lines = source.splitlines()
    index = 0
    while index < len(lines):
        opened = _FENCE.match(lines[index])
        if opened is None:
            index += 1
            continue
        words = opened["info"].split()
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines) and not lines[index].startswith("```"):
            body.append(lines[index])
            index += 1
        if index == len(lines):
            raise GuideError(f"line {start + 1}: a fenced block that is never closed")
        index += 1
        if not words or words[0] != "sh":
            continue
        tags = [word.removeprefix("guide:") for word in words[1:] if word.startswith("guide:")]
        if len(tags) > 1 or len(words) > 1 + len(tags):
            raise GuideError(f"line {start + 1}: expected 'sh' or 'sh guide:STEP', got {words}")
        blocks.append(GuideBlock(tags[0] if tags else None, start + 1, tuple(_logical_lines(body))))
    return blocks


def split_command(command: str) -> list[str]:
    """A runnable step's command as words; refuses shell syntax the test could not run as shown."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    operators = [token for token in lexer if token and set(token) <= set(_OPERATORS)]
    # A shell expands $ and ` even inside double quotes: refused anywhere.
    if operators or "$" in command or "`" in command:
        raise GuideError(f"shell syntax in a step the test runs: {command!r}")
    words = shlex.split(command, comments=True)
    if not words:
        raise GuideError(f"an empty command: {command!r}")
    if words[0] != "detserve" and words[0] not in PUBLISHING_PROGRAMS:
        raise GuideError(f"a step runs {words[0]!r}, not detserve or a publishing command")
    return words


def guide_steps(text: str | None = None) -> dict[str, tuple[str, ...]]:
    """The runnable steps by name, in the guide's order; refuses duplicates and unknown steps."""
    steps: dict[str, tuple[str, ...]] = {}
    for block in guide_blocks(text):
        if block.step is None:
            continue
        if block.step in steps:
            raise GuideError(f"line {block.line}: step {block.step} appears twice")
        if not block.commands:
            raise GuideError(f"line {block.line}: step {block.step} has no command")
        for command in block.commands:
            split_command(command)
        steps[block.step] = block.commands
    return steps


def detserve_commands(text: str | None = None) -> list[tuple[GuideBlock, list[str]]]:
    """Every ``detserve`` command of every ``sh`` block, as words (shell lines are skipped)."""
    found: list[tuple[GuideBlock, list[str]]] = []
    for block in guide_blocks(text):
        for command in block.commands:
            words = shlex.split(command, comments=True)
            if words and words[0] == "detserve":
                found.append((block, words))
    return found


@dataclass(frozen=True)
class TinyTarget:
    """Where the guide's commands point when the test runs them: the tiny model's repository on
    olah, a CPU profile of ``name``, and the commit ``lock-model`` wrote (once it has)."""

    repo_id: str
    name: str
    revision: str | None = None

    def words(self, command: str) -> list[str]:
        text = command.replace(GUIDE_MODEL, self.repo_id)
        text = text.replace(GUIDE_DEVICE, "--device cpu").replace(GUIDE_NAME, self.name)
        if REVISION_WORD in text:
            if self.revision is None:
                raise GuideError(f"{command!r} needs the commit, and lock-model has not run yet")
            text = text.replace(REVISION_WORD, self.revision)
        return split_command(text)
