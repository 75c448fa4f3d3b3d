"""A model's text side: tokenizer, chat template and context length, which is all that counting
a prompt's tokens needs. A resident model carries its own; ``/tokenize`` for a model that is not
resident reads just these files, so counting never loads weights."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from cortex.protocol.errors import ApiError
from neuron.chat.template import ChatTemplate


@dataclass(frozen=True)
class TextSide:
    tokenizer: Tokenizer
    template: ChatTemplate
    context_length: int


def load_tokenizer(model_id: str, model_dir: Path) -> Tokenizer:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ApiError("not_found", f"model {model_id!r} has no tokenizer.json", code="missing_tokenizer")
    return Tokenizer.from_file(str(path))


def load_text_side(model_id: str, model_dir: Path) -> TextSide:
    cfg_path = model_dir / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    context = cfg.get("max_position_embeddings") or cfg.get("text_config", {}).get("max_position_embeddings") or 0
    return TextSide(load_tokenizer(model_id, model_dir), ChatTemplate.from_model_dir(model_dir), int(context))
