"""Anthropic error envelope: ``{"type": "error", "error": {"type", "message"}, "request_id"}``,
with Anthropic's type names and statuses (a fleet that cannot serve now is ``overloaded_error``)."""

from __future__ import annotations

import msgspec

from cortex.protocol.errors import ApiError

KIND_TO_TYPE: dict[str, str] = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "conflict": "invalid_request_error",  # Anthropic uses it "for other 4XX status codes"
    "too_large": "request_too_large",
    "rate_limit": "rate_limit_error",
    "internal": "api_error",
    "upstream": "api_error",
    "unavailable": "overloaded_error",
    "timeout": "api_error",
    "insufficient_storage": "overloaded_error",
}


def render(err: ApiError, request_id: str | None = None) -> dict:
    out: dict = {"type": "error", "error": {"type": KIND_TO_TYPE[err.kind], "message": err.message}}
    if request_id is not None:
        out["request_id"] = request_id
    return out


def render_sse(err: ApiError) -> bytes:
    """The error as Anthropic's ``error`` event, for failures after a stream has started."""
    return b"event: error\ndata: " + msgspec.json.encode(render(err)) + b"\n\n"
