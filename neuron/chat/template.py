"""A model's own chat template (``chat_template.jinja`` or ``tokenizer_config.json``), rendered in
jinja2's sandbox the way transformers renders it; plain ChatML for a model without one."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from cortex.protocol.errors import ApiError, invalid

CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _raise(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


class ChatTemplate:
    """Renders OpenAI-style messages (plain dicts) into the model's prompt text."""

    def __init__(self, source: str, *, bos_token: str | None = None, eos_token: str | None = None) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.source = source
        self._template = env.from_string(source)
        self._special = {"bos_token": bos_token or "", "eos_token": eos_token or ""}

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> ChatTemplate:
        cfg: dict[str, Any] = {}
        cfg_path = model_dir / "tokenizer_config.json"
        if cfg_path.is_file():
            cfg = json.loads(cfg_path.read_text())
        source = None
        jinja = model_dir / "chat_template.jinja"
        if jinja.is_file():
            source = jinja.read_text()
        elif isinstance(cfg.get("chat_template"), str):
            source = cfg["chat_template"]
        elif isinstance(cfg.get("chat_template"), list):  # named templates: take "default"
            named = {t.get("name"): t.get("template") for t in cfg["chat_template"]}
            source = named.get("default") or next(iter(named.values()), None)
        return cls(
            source or CHATML, bos_token=_token_text(cfg.get("bos_token")), eos_token=_token_text(cfg.get("eos_token"))
        )

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> str:
        context = {**self._special, **(extra or {})}
        context.update(messages=messages, tools=tools or None, add_generation_prompt=add_generation_prompt)
        try:
            return self._template.render(**context)
        except TemplateError as exc:
            raise invalid(f"the model's chat template rejected the conversation: {exc}", param="messages") from None
        except Exception as exc:  # a broken template is the model's fault, not the client's
            raise ApiError("internal", f"the model's chat template failed: {type(exc).__name__}: {exc}") from None
