"""Keys on the wire, as both programs read and send them: ``Authorization: Bearer KEY`` (or
Anthropic's ``x-api-key: KEY``). Clients present API keys to the gateway this way, and the
gateway presents a neuron's fleet key (``[[neurons]] api_key``) to that neuron."""

from __future__ import annotations

import hmac
from collections.abc import Mapping


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request presents, if any."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-key")


def key_matches(key: str | None, keys: list[str]) -> bool:
    """Whether ``key`` is one of ``keys`` (compared in constant time)."""
    return key is not None and any(hmac.compare_digest(key.encode(), k.encode()) for k in keys)


def key_headers(key: str | None) -> dict[str, str]:
    """The header that presents ``key`` (none for no key)."""
    return {"authorization": f"Bearer {key}"} if key else {}
