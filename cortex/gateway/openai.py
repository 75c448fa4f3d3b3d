"""The OpenAI dialect on the gateway: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``
(which Anthropic clients list too)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from sanic import Blueprint, Request, response

from cortex.gateway.context import context_of
from cortex.gateway.proxy import Relay, RoutedBody
from cortex.protocol.errors import invalid

bp = Blueprint("openai")


def parse_routed(body: bytes, *, needs: str) -> RoutedBody:
    """Reads ``model`` and ``stream`` (and checks that ``needs`` is present) without decoding the rest."""
    if not body:
        raise invalid("the request body is empty: expected a JSON object")
    try:
        parsed = msgspec.json.decode(body, type=RoutedBody)
    except msgspec.ValidationError as exc:
        text = str(exc)
        param = text.rsplit("`$.", 1)[1].rstrip("`") if "`$." in text else None
        if "missing required field `model`" in text:
            param = "model"
        raise invalid(f"invalid request: {text}", param=param) from None
    except msgspec.DecodeError as exc:
        raise invalid(f"malformed JSON body: {exc}") from None
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


@bp.get("/v1/models")
async def models(request: Request):
    """The merged catalogue; an Anthropic client (``anthropic-version`` header) gets the same list
    with the fields of Anthropic's model objects added."""
    entries = context_of(request).fleet.model_entries()
    body: dict = {"object": "list", "data": entries}
    if "anthropic-version" in request.headers:
        for e in entries:
            created = datetime.fromtimestamp(e["created"], UTC).isoformat().replace("+00:00", "Z")
            e.update(type="model", display_name=e["id"], created_at=created)
        body.update(has_more=False, first_id=entries[0]["id"] if entries else None)
        body["last_id"] = entries[-1]["id"] if entries else None
    return response.raw(msgspec.json.encode(body), content_type="application/json")
