"""The Anthropic dialect on the gateway: ``/v1/messages`` and ``/v1/messages/count_tokens``.

Requests are checked and translated here (``cortex.translate.anthropic``) and relayed as OpenAI
chat to the neuron that serves the model; errors go out in Anthropic's envelope (the app picks
the envelope by path)."""

from __future__ import annotations

import logging

import msgspec
from sanic import Blueprint, Request, response

from cortex.gateway.context import GatewayContext, context_of
from cortex.gateway.proxy import Relay, RoutedBody, Translation, count_prompt
from cortex.protocol.anthropic.requests import (
    Conversation,
    MessagesRequest,
    check_conversation,
    check_messages,
    decode,
)
from cortex.protocol.errors import ApiError
from cortex.protocol.openai.chat import decode_completion
from cortex.translate import anthropic as translate

log = logging.getLogger(__name__)
bp = Blueprint("anthropic")


async def _count_quietly(ctx: GatewayContext, model: str, body: dict) -> int | None:
    """For opening a stream early (during a cold load): a count, or None when no neuron can give
    one yet."""
    try:
        return await ctx.scheduler.count_tokens(model, msgspec.json.encode(body))
    except ApiError as exc:
        log.debug("no early token count for %s: %s", model, exc.message)
        return None


@bp.post("/v1/messages")
async def messages(request: Request):
    ctx = context_of(request)
    req: MessagesRequest = decode(request.body, MessagesRequest)
    check_messages(req)
    model = ctx.fleet.canonical(req.model)
    body = msgspec.json.encode(translate.chat_request(req, model))
    message_id = translate.new_message_id()

    def whole(data: bytes) -> bytes:
        return msgspec.json.encode(translate.message_response(decode_completion(data), req.model, message_id))

    translation = Translation(whole=whole)
    if req.stream:
        translation.stream = translate.MessagesStream(req.model, message_id)
        translation.count = lambda: _count_quietly(ctx, model, translate.tokenize_request(req, model))
    relay = Relay(request, ctx, "messages", "/v1/chat/completions", translation)
    return await relay.run(body, RoutedBody(model=req.model, stream=req.stream))


@bp.post("/v1/messages/count_tokens")
async def count_tokens(request: Request):
    """Exact: the neuron renders the model's own chat template and counts with its tokenizer."""
    ctx = context_of(request)
    req: Conversation = decode(request.body, Conversation)
    check_conversation(req)
    model = ctx.fleet.canonical(req.model)
    count = await count_prompt(ctx, model, translate.tokenize_request(req, model), "count_tokens")
    return response.raw(msgspec.json.encode({"input_tokens": count}), content_type="application/json")
