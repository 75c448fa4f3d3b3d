"""The OpenAI Responses dialect on the gateway: ``/v1/responses`` (stateless) and
``/v1/responses/input_tokens``.

Requests are checked and translated here (``cortex.translate.responses``) and relayed as OpenAI
chat to the neuron that serves the model; errors go out in the OpenAI envelope."""

from __future__ import annotations

import msgspec
from sanic import Blueprint, Request, response

from cortex.gateway.context import context_of
from cortex.gateway.proxy import Relay, RoutedBody, Translation, count_prompt
from cortex.protocol.openai.chat import decode_completion
from cortex.protocol.openai.responses import ResponsesRequest, check_responses, decode
from cortex.translate import responses as translate

bp = Blueprint("responses")


@bp.post("/v1/responses")
async def responses(request: Request):
    ctx = context_of(request)
    req: ResponsesRequest = decode(request.body)
    check_responses(req)
    model = ctx.fleet.canonical(req.model)
    body = msgspec.json.encode(translate.chat_request(req, model))
    response_id = translate.new_id("resp")

    def whole(data: bytes) -> bytes:
        return msgspec.json.encode(translate.response_object(decode_completion(data), req, req.model, response_id))

    translation = Translation(whole=whole)
    if req.stream:
        translation.stream = translate.ResponsesStream(req, req.model, response_id)
    relay = Relay(request, ctx, "responses", "/v1/chat/completions", translation)
    return await relay.run(body, RoutedBody(model=req.model, stream=req.stream))


@bp.post("/v1/responses/input_tokens")
async def input_tokens(request: Request):
    """Exact, as ``/v1/messages/count_tokens``: the model's own template and tokenizer."""
    ctx = context_of(request)
    req: ResponsesRequest = decode(request.body)
    check_responses(req)
    model = ctx.fleet.canonical(req.model)
    count = await count_prompt(ctx, model, translate.tokenize_request(req, model), "input_tokens")
    return response.raw(
        msgspec.json.encode({"object": "response.input_tokens", "input_tokens": count}), content_type="application/json"
    )
