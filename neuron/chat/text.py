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
from neuron.loading.gguf import GgufSource, gguf_groups, gguf_tokenizer


@dataclass(frozen=True)
class TextSide:
    tokenizer: Tokenizer
    template: ChatTemplate
    context_length: int
    longest_token_chars: int = 1
    eos_ids: frozenset[int] = frozenset()  # end tokens the files name beyond generation_config's


def longest_token_chars(tokenizer: Tokenizer) -> int:
    """The most characters one token of the vocabulary stands for. A text of N characters needs at
    least N / this many tokens, so a prompt too long for the context is refused from its length
    alone, before tokenizing it (a 50 MB prompt costs gigabytes of tokenizer memory)."""
    return max(1, max((len(t) for t in tokenizer.get_vocab(with_added_tokens=True)), default=1))


def encode_prompt(side, text: str, *, param: str) -> list[int]:
    """``text``'s token ids; a text too long for ``side``'s context by its length alone is a 400
    (``context_length_exceeded``) before any tokenizing. ``side`` is a :class:`TextSide` or a
    resident model (both carry ``tokenizer``, ``context_length`` and ``longest_token_chars``)."""
    context = side.context_length
    if context and len(text) > context * side.longest_token_chars:
        raise ApiError(
            "invalid_request",
            f"the prompt is {len(text)} characters: more than the model's context of {context} tokens can hold "
            f"(a token stands for at most {side.longest_token_chars} characters)",
            param=param,
            code="context_length_exceeded",
        )
    return side.tokenizer.encode(text, add_special_tokens=False).ids


def load_tokenizer(model_id: str, model_dir: Path) -> Tokenizer:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ApiError("not_found", f"model {model_id!r} has no tokenizer.json", code="missing_tokenizer")
    return Tokenizer.from_file(str(path))


def _special_eos(tokenizer: Tokenizer, model_dir: Path) -> set[int]:
    ids = set()
    cfg_path = model_dir / "tokenizer_config.json"
    if cfg_path.is_file():
        eos = json.loads(cfg_path.read_text()).get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        if isinstance(eos, str) and tokenizer.token_to_id(eos) is not None:
            ids.add(tokenizer.token_to_id(eos))
    return ids


def load_text_side(model_id: str, model_dir: Path, gguf: GgufSource | None = None) -> TextSide:
    """The text side from the HF files, or from a GGUF file's metadata where the folder has no
    tokenizer.json (``gguf``: the model's file when it is open already)."""
    own = gguf is None
    if own and not (model_dir / "tokenizer.json").is_file():
        paths = next(iter(gguf_groups(model_dir).values()), None)  # every file of a model shares its tokenizer
        gguf = GgufSource(paths) if paths else None
    try:
        if gguf is None:
            cfg_path = model_dir / "config.json"
            cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
            context = cfg.get("max_position_embeddings") or cfg.get("text_config", {}).get("max_position_embeddings")
            tokenizer = load_tokenizer(model_id, model_dir)
            template = ChatTemplate.from_model_dir(model_dir)
            eos = _special_eos(tokenizer, model_dir)
        else:
            has_json = (model_dir / "tokenizer.json").is_file()
            tokenizer = load_tokenizer(model_id, model_dir) if has_json else gguf_tokenizer(gguf)
            context = gguf.hf_config()["max_position_embeddings"]
            eos = {int(i) for i in gguf.end_token_ids() if 0 <= int(i) < tokenizer.get_vocab_size()}
            bos = gguf.value("tokenizer.ggml.bos_token_id")
            source = gguf.chat_template()
            template = (
                ChatTemplate(
                    source,
                    bos_token=tokenizer.id_to_token(int(bos)) if bos is not None else None,
                    eos_token=tokenizer.id_to_token(min(eos)) if eos else None,
                )
                if source
                else ChatTemplate.from_model_dir(model_dir)
            )
    finally:
        if own and gguf is not None:
            gguf.close()
    return TextSide(tokenizer, template, int(context or 0), longest_token_chars(tokenizer), frozenset(eos))
