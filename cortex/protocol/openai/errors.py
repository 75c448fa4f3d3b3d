"""OpenAI error envelope: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import msgspec

from cortex.protocol.errors import ApiError

KIND_TO_TYPE: dict[str, str] = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "conflict": "conflict_error",
    "too_large": "invalid_request_error",
    "rate_limit": "rate_limit_error",
    "internal": "server_error",
    "upstream": "upstream_error",
    "unavailable": "service_unavailable_error",
    "timeout": "timeout_error",
    "insufficient_storage": "insufficient_storage_error",
}


def render(err: ApiError) -> dict:
    return {
        "error": {
            "message": err.message,
            "type": KIND_TO_TYPE[err.kind],
            "param": err.param,
            "code": err.code if err.code is not None else err.kind,
        }
    }


def render_sse(err: ApiError) -> bytes:
    """The error as one SSE event, for failures after a stream has started."""
    return b"data: " + msgspec.json.encode(render(err)) + b"\n\n"
