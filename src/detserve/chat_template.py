"""The pinned chat template: read from the verified snapshot, rendered as the server renders it.

A chat's prompt is the model's chat template applied to its messages. The template is an input
that changes the tokens, so it comes from the pinned snapshot only (``chat_template.jinja``, else
``tokenizer_config.json``'s ``chat_template``, the order transformers reads them in) and is never
supplied: detserve refuses ``--chat-template`` in profiles and every template option in bundle
lines. A bundle records each chat's token count under this template and the pinned tokenizer;
sampling compares it with the prompt token ids the server returns.

Rendering follows transformers' ``apply_chat_template`` (which vLLM's server uses): Jinja2's
immutable sandbox with ``trim_blocks``, ``lstrip_blocks`` and loop controls, the tokenizer's
special tokens as variables, ``add_generation_prompt`` true; the text is then tokenized without
adding special tokens (the template writes its own).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from detserve.errors import InputError

CONFIG_FILE: Final = "tokenizer_config.json"
TEMPLATE_FILE: Final = "chat_template.jinja"


class TemplateRaised(Exception):
    """``raise_exception`` called by a template."""


def pinned_chat_template(files: Mapping[str, bytes]) -> str:
    """The chat template among the pinned tokenizer files; :class:`InputError` when none."""
    if TEMPLATE_FILE in files:
        return files[TEMPLATE_FILE].decode("utf-8")
    config = json.loads(files.get(CONFIG_FILE, b"{}") or b"{}")
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, str) and template:
        return template
    if isinstance(template, list):
        raise InputError(
            f"{CONFIG_FILE}: named chat templates (a list) are not supported; detserve renders "
            "the single default template only"
        )
    raise InputError(
        "the pinned snapshot has no chat template (chat_template.jinja or "
        f"{CONFIG_FILE}'s chat_template); chats need one, and detserve never supplies one"
    )


def special_tokens(files: Mapping[str, bytes]) -> dict[str, str]:
    """``bos_token``, ``eos_token``, ... as the template sees them (strings)."""
    config = json.loads(files.get(CONFIG_FILE, b"{}") or b"{}")
    tokens: dict[str, str] = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = config.get(name) if isinstance(config, dict) else None
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            tokens[name] = value
    return tokens


def _raise(message: str) -> None:
    raise TemplateRaised(message)


def render_chat(
    template: str, messages: Sequence[Mapping[str, Any]], variables: Mapping[str, str]
) -> str:
    """The prompt text ``template`` makes of ``messages``, with the generation prompt."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    environment.globals["raise_exception"] = _raise
    try:
        compiled = environment.from_string(template)
        return compiled.render(
            messages=[dict(message) for message in messages],
            add_generation_prompt=True,
            **variables,
        )
    except TemplateRaised as exc:
        raise InputError(f"the pinned chat template refuses these messages: {exc}") from exc
    except jinja2.TemplateError as exc:
        raise InputError(f"the pinned chat template cannot be rendered: {exc}") from exc
