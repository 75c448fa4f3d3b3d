"""Reading an upstream OpenAI stream as it arrives: bytes to events to chunks. Network reads cut
events anywhere (mid-line, mid-UTF-8 character); :class:`EventReader` holds the incomplete tail
and yields whole ``data`` payloads, joining multi-line data as the SSE spec says."""

from __future__ import annotations

import msgspec

from cortex.protocol.errors import ApiError
from cortex.protocol.openai.chat import ChatChunk

DONE = b"[DONE]"


_decoder = msgspec.json.Decoder(ChatChunk)


class EventReader:
    def __init__(self) -> None:
        self._tail = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data payloads of the events that ``chunk`` completes."""
        buf = self._tail + chunk if self._tail else chunk
        out: list[bytes] = []
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            line = buf[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:  # a blank line ends the event
                if self._data:
                    out.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
            # comments (":"), event:, id: and retry: lines carry nothing we need
        self._tail = buf[start:]
        return out

    def close(self) -> list[bytes]:
        """What is left when the upstream ends (an event without its blank line)."""
        if self._tail.startswith(b"data:"):
            value = self._tail[5:]
            self._data.append(value[1:] if value.startswith(b" ") else value)
        self._tail = b""
        out = [b"\n".join(self._data)] if self._data else []
        self._data = []
        return out


def decode_chunk(payload: bytes) -> ChatChunk | None:
    """A chunk, or None for ``[DONE]``; anything else is the neuron's fault (502)."""
    if payload == DONE:
        return None
    try:
        return _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ApiError("upstream", f"the neuron sent a stream event that is not a chat chunk: {exc}") from None


def upstream_error(error: dict) -> ApiError:
    """An error event a neuron sent after the first byte, as an ApiError to re-render."""
    message = str(error.get("message") or error)
    kind = {
        "invalid_request_error": "invalid_request",
        "not_found_error": "not_found",
        "rate_limit_error": "rate_limit",
        "timeout_error": "timeout",
    }.get(str(error.get("type")), "upstream")
    return ApiError(kind, message)
