"""One list of chat-template keys, refused by name wherever a request comes from.

A key that would supply or configure the chat template (``chat_template``, its options, what
vLLM renders with it) is refused in a bundle line and by the gateway, from the one list
:data:`detserve.request_kinds.TEMPLATE_OVERRIDES`: adding a key there refuses it in both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detserve.errors import BundleError
from detserve.gateway.admission import Policy, Refused, admit
from detserve.prompts import load_bundle
from detserve.request_kinds import TEMPLATE_OVERRIDES

from .test_requests import GOOD_CHAT, write_bundle

POLICY = Policy(
    served_model_name="m",
    seed=0,
    default_max_tokens=4,
    max_model_len=64,
    structured_outputs_pinned=True,
)
#: refused by the gateway and by a bundle line before the lists were one: none may be accepted
REFUSED_BEFORE = frozenset(
    {
        "chat_template",
        "chat_template_kwargs",
        "add_generation_prompt",
        "continue_final_message",
        "add_special_tokens",
        "documents",
        "mm_processor_kwargs",
        "tools",
    }
)


def test_the_list_keeps_every_key_refused_before() -> None:
    assert REFUSED_BEFORE <= TEMPLATE_OVERRIDES


@pytest.mark.parametrize("key", sorted(TEMPLATE_OVERRIDES))
@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("chat", {"messages": [{"role": "user", "content": "Hi"}]}),
        ("completion", {"prompt": "Hi"}),
    ],
    ids=["chat", "completion"],
)
def test_the_gateway_refuses_every_template_key_by_name(
    key: str, kind: str, body: dict[str, object]
) -> None:
    with pytest.raises(Refused) as refused:
        admit(kind, {"model": "m", **body, key: {}}, POLICY)
    assert (refused.value.param, refused.value.status) == (key, 400)
    assert refused.value.message.startswith(f"{key} is refused: ")


@pytest.mark.parametrize("key", sorted(TEMPLATE_OVERRIDES))
def test_a_bundle_line_with_a_template_key_is_refused_by_name(tmp_path: Path, key: str) -> None:
    line = {"id": "x", "messages": [{"content": "Hi", "role": "user"}], "n_tokens": 3, key: {}}
    bundle, pin = write_bundle(tmp_path, [GOOD_CHAT, json.dumps(line).encode() + b"\n"])
    with pytest.raises(BundleError, match=f"{key} refused: the chat template is the pinned"):
        load_bundle(bundle, pin)
