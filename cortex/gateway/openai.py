"""The OpenAI dialect on the gateway: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``
(which Anthropic clients list too)."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import unquote

import msgspec
from sanic import Blueprint, Request, response

from cortex.gateway.context import context_of
from cortex.gateway.proxy import Relay, RoutedBody
from cortex.protocol.errors import ApiError, decode_body, invalid

bp = Blueprint("openai")


def parse_routed(body: bytes, *, needs: str) -> RoutedBody:
    """Reads ``model`` and ``stream`` (and checks that ``needs`` is present) without decoding the rest."""
    parsed = decode_body(body, RoutedBody)
    if not parsed.model:
        raise invalid("model must be a non-empty string", param="model")
    raw = bytes(getattr(parsed, needs))
    if not raw or raw == b"null":
        raise invalid(f"{needs} is required", param=needs)
    if needs == "messages" and not raw.lstrip().startswith(b"["):
        raise invalid("messages must be a list of messages", param="messages")
    return parsed


@bp.post("/v1/chat/completions")
async def chat_completions(request: Request):
    parsed = parse_routed(request.body, needs="messages")
    return await Relay(request, context_of(request), "chat", "/v1/chat/completions").run(request.body, parsed)


@bp.post("/v1/completions")
async def completions(request: Request):
    parsed = parse_routed(request.body, needs="prompt")
    return await Relay(request, context_of(request), "completions", "/v1/completions").run(request.body, parsed)


def _anthropic_fields(entry: dict) -> dict:
    """An entry with the fields of Anthropic's model object added (for an ``anthropic-version`` client)."""
    created = datetime.fromtimestamp(entry["created"], UTC).isoformat().replace("+00:00", "Z")
    entry.update(type="model", display_name=entry["id"], created_at=created)
    return entry


@bp.get("/v1/models")
async def models(request: Request):
    """The merged catalogue; an Anthropic client (``anthropic-version`` header) gets the same list
    with the fields of Anthropic's model objects added."""
    entries = context_of(request).fleet.model_entries()
    body: dict = {"object": "list", "data": entries}
    if "anthropic-version" in request.headers:
        for e in entries:
            _anthropic_fields(e)
        body.update(has_more=False, first_id=entries[0]["id"] if entries else None)
        body["last_id"] = entries[-1]["id"] if entries else None
    return response.raw(msgspec.json.encode(body), content_type="application/json")


@bp.get("/v1/models/<model_id:path>")
async def model(request: Request, model_id: str):
    """One entry of ``/v1/models`` (the SDKs' ``models.retrieve``); ids may hold a ``/``."""
    model_id = unquote(model_id)
    entry = next((e for e in context_of(request).fleet.model_entries() if e["id"] == model_id), None)
    if entry is None:
        raise ApiError(
            "not_found", f"model {model_id!r} is not served by this fleet", param="model", code="model_not_found"
        )
    if "anthropic-version" in request.headers:
        _anthropic_fields(entry)
    return response.raw(msgspec.json.encode(entry), content_type="application/json")
