"""Reading an upstream SSE stream cut anywhere by the network."""

from __future__ import annotations

import pytest

from cortex.protocol.errors import ApiError
from cortex.translate.sse import EventReader, decode_chunk

STREAM = (
    b'data: {"choices":[{"index":0,"delta":{"content":"h\xc3\xa9"}}]}\n\n'
    b": keep-alive\n\n"
    b'event: x\r\ndata: {"choices":[],\r\ndata: "usage":{"prompt_tokens":3,"completion_tokens":1}}\r\n\r\n'
    b"data: [DONE]\n\n"
)
WANT = [
    b'{"choices":[{"index":0,"delta":{"content":"h\xc3\xa9"}}]}',
    b'{"choices":[],\n"usage":{"prompt_tokens":3,"completion_tokens":1}}',
    b"[DONE]",
]


def test_whole_events_come_out_wherever_the_bytes_are_cut():
    for cut in range(len(STREAM) + 1):
        reader = EventReader()
        got = reader.feed(STREAM[:cut]) + reader.feed(STREAM[cut:]) + reader.close()
        assert got == WANT, cut
    reader = EventReader()
    assert [p for i in range(len(STREAM)) for p in reader.feed(STREAM[i : i + 1])] == WANT


def test_a_last_event_without_its_blank_line_is_kept_at_close():
    reader = EventReader()
    assert reader.feed(b'data: {"choices":[]}') == []
    assert reader.close() == [b'{"choices":[]}']


def test_chunks_decode_and_garbage_is_the_neurons_fault():
    first = decode_chunk(WANT[0])
    assert first is not None and first.choices[0].delta.content == "hé"
    assert decode_chunk(WANT[1]).usage.prompt_tokens == 3
    assert decode_chunk(b"[DONE]") is None
    with pytest.raises(ApiError) as info:
        decode_chunk(b"<html>")
    assert info.value.status == 502
