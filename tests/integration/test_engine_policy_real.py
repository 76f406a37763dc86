"""The engine-option allowlist, asked of the real server's own parser (vLLM 0.32, in the image).

The profile check is only as good as its agreement with how the server reads its command line.
vLLM's parser (argparse, ``allow_abbrev``) expands an unambiguous prefix of an option name, so
these tests ask the parser inside the pinned image: that it really expands a prefix of a refused
option (the demonstrated hole), that every allowlisted name is one of its exact option names of
the kind the allowlist says (a flag, or one value), and that the profile refuses the prefix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import docker
import pytest

from detserve.engine_policy import ENGINE_OPTIONS, MANAGED_OPTIONS, NONDETERMINISTIC_OPTIONS

from .conftest import DetserveRunner, ProfileFactory

pytestmark = pytest.mark.integration

# Runs inside the image: the server's own parser, exactly as its entrypoint builds it.
PARSER_SCRIPT = """
import json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = make_arg_parser(FlexibleArgumentParser())
options = {s: {"dest": a.dest, "nargs": a.nargs,
               "choices": [str(c) for c in a.choices] if a.choices else None}
           for a in parser._actions for s in a.option_strings}
parsed = {}
for words in json.loads(sys.argv[1]):
    args, unknown = parser.parse_known_args(words)
    defaults = parser.parse_known_args([])[0]
    parsed[" ".join(words)] = sorted(
        k for k in vars(args) if vars(args)[k] != vars(defaults).get(k)
    )
print(json.dumps({"allow_abbrev": parser.allow_abbrev, "options": options, "parsed": parsed}))
"""


def _sample_words(name: str) -> list[str]:
    option = ENGINE_OPTIONS[name]
    if option.kind == "flag":
        return [name]
    if option.kind == "choice":
        return [name, option.choices[-1]]
    return [name, "7"]


@pytest.fixture(scope="module")
def real_parser(docker_client: docker.DockerClient, pinned_image: str) -> dict[str, Any]:
    cases = [["--enable-prefix-cach"], ["--no-enable-prefix-caching", "--enable-prefix-cach"]]
    cases += [_sample_words(name) for name in sorted(ENGINE_OPTIONS)]
    output = docker_client.containers.run(
        pinned_image,
        entrypoint=["/opt/venv/bin/python3", "-c", PARSER_SCRIPT, json.dumps(cases)],
        network_disabled=True,
        remove=True,
        stderr=False,
    )
    result: dict[str, Any] = json.loads(output.decode("utf-8").strip().splitlines()[-1])
    return result


def test_the_real_parser_expands_a_prefix_of_a_refused_option(real_parser: dict[str, Any]) -> None:
    assert real_parser["allow_abbrev"] is True
    assert real_parser["parsed"]["--enable-prefix-cach"] == ["enable_prefix_caching"]
    # after detserve's own --no-enable-prefix-caching, the prefix still turns it back on
    assert real_parser["parsed"]["--no-enable-prefix-caching --enable-prefix-cach"] == [
        "enable_prefix_caching"
    ]


def test_every_allowed_option_is_an_exact_name_of_its_kind(real_parser: dict[str, Any]) -> None:
    options = real_parser["options"]
    for name, option in sorted(ENGINE_OPTIONS.items()):
        assert name in options, f"{name} is not an option of the real server"
        real = options[name]
        if option.kind == "flag":
            assert real["nargs"] == 0, f"{name} takes a value in the real parser"
        else:
            assert real["nargs"] is None, f"{name} is not a one-value option: {real}"
        if option.kind == "choice" and real["choices"]:
            assert set(option.choices) <= set(real["choices"]), name
        # it sets its own destination and nothing else (nothing, where the value is the default)
        words = " ".join(_sample_words(name))
        assert set(real_parser["parsed"][words]) <= {real["dest"]}, words


def test_every_managed_option_and_most_refused_ones_exist(real_parser: dict[str, Any]) -> None:
    options = real_parser["options"]
    assert set(options) >= MANAGED_OPTIONS
    missing = sorted(set(NONDETERMINISTIC_OPTIONS) - set(options))
    # refused names that vLLM 0.32 no longer has are refused all the same (older images)
    assert missing == ["--num-speculative-tokens", "--speculative-model"]


def test_the_profile_refuses_the_prefix(
    profile_factory: ProfileFactory, detserve: DetserveRunner
) -> None:
    def abbreviated(document: dict[str, Any]) -> None:
        document["vllm"]["extra_args"] = {"--enable-prefix-cach": True}

    path: Path = profile_factory("abbrev", edit=abbreviated)
    validated = detserve("config", "validate", "--config", path)
    assert validated.code == 2, validated
    assert "--enable-prefix-cach is an abbreviation" in validated.err
    assert "--enable-prefix-caching" in validated.err
    started = detserve("start", "--config", path)
    assert started.code == 2, started
