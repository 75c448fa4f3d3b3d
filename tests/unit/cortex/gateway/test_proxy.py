"""The proxy's byte-level helpers: first-token detection and usage from a stream's tail."""

from __future__ import annotations

import pytest

from cortex.gateway.proxy import _has_token, _relay_headers, _usage


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        (b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n', False),
        (b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n', True),
        (b'data: {"choices": [{"delta": {"content": "Hi"}}]}\n\n', True),
        (b'data: {"choices":[{"delta":{"reasoning_content":"hm"}}]}\n\n', True),
        (b'data: {"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}\n\n', True),
        (b'data: {"choices":[{"text":"","finish_reason":"stop"}]}\n\n', False),
        (b": keep-alive\n\n", False),
    ],
)
def test_first_token_detection(chunk, expected):
    assert _has_token(chunk) is expected


def test_usage_is_found_in_the_last_event_even_split_across_chunks():
    tail = (
        b'data: {"choices":[{"delta":{"content":"x"}}]}\n\ndata: {"choices":[{"delta":{},"finish_reason":"stop"}],'
        + b'"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}\n\ndata: [DONE]\n\n'
    )
    final = _usage(tail)
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (12, 34) and final.timings is None
    whole = _usage(
        b'{"id":"x","usage":{"prompt_tokens":1,"completion_tokens":2},"timings":{"predicted_n":1,"predicted_ms":25.5}}'
    )
    assert (whole.usage.completion_tokens, whole.timings.predicted_n, whole.timings.predicted_ms) == (2, 1, 25.5)
    assert _usage(b"data: [DONE]\n\n") is None
    assert _usage(b'data: {"usage": broken\n\n') is None
    assert _usage(b'data: {"usage": null}\n\n') is None


def test_hop_by_hop_headers_never_cross():
    out = _relay_headers(
        {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked", "Connection": "close", "X-Req": "1"},
        {"x-cortex-node": "a"},
    )
    assert out == {"Content-Type": "text/event-stream", "X-Req": "1", "x-cortex-node": "a"}
