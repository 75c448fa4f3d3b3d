"""``ApiError``: an error answer as plain data, raised anywhere, rendered once per dialect.

``kind`` is dialect-neutral; each dialect's ``errors`` module maps it to its own type names.
Both programs use it: the neuron answers in the OpenAI dialect, the gateway in the client's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

STATUS_OF_KIND: dict[str, int] = {
    "invalid_request": 400,
    "authentication": 401,
    "permission": 403,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "rate_limit": 429,
    "internal": 500,
    "upstream": 502,
    "unavailable": 503,
    "timeout": 504,
    "insufficient_storage": 507,
}


_KIND_OF_STATUS: dict[int, str] = {status: kind for kind, status in STATUS_OF_KIND.items()} | {422: "invalid_request"}


def kind_of_status(status: int, *, upstream: bool = False) -> str:
    """The error kind of an HTTP status: the one map both programs use, for their own answers
    and for a peer's (``upstream``: a 5xx we did not choose reads as the peer's failure)."""
    kind = _KIND_OF_STATUS.get(status)
    if kind is not None and not (upstream and kind == "internal"):
        return kind
    if status >= 500:
        return "upstream" if upstream else "internal"
    return "invalid_request"


class ApiError(Exception):
    """An answer to send instead of a result: status, kind, a message naming what was wrong."""

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        if kind not in STATUS_OF_KIND:
            raise ValueError(f"unknown error kind {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param
        self.code = code
        self.status = status if status is not None else STATUS_OF_KIND[kind]
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"ApiError({self.status} {self.kind}: {self.message!r}, param={self.param!r})"


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError("invalid_request", message, param=param, code=code)


_AT_RE = re.compile(r" - at `\$\.?([^`]*)`$")
_BAD_TAG_RE = re.compile(r"^Invalid value '([^']*)'")
_MISSING_RE = re.compile(r"^Object missing required field `([^`]*)`")


def invalid_field(exc: msgspec.ValidationError, bad_tag: Callable[[str, str], str | None] | None = None) -> ApiError:
    """A msgspec validation error as a 400 that reads ``where: what`` (``messages[0].role:
    Expected `str`…``); ``bad_tag(where, value)`` may say better what an unknown ``type`` means."""
    text = str(exc)
    at = _AT_RE.search(text)
    where = at.group(1) if at else ""
    what = text[: at.start()] if at else text
    tag = _BAD_TAG_RE.match(what)
    if tag and bad_tag is not None:
        what = bad_tag(where, tag.group(1)) or what
    missing = _MISSING_RE.match(what)
    if missing:
        where = f"{where}.{missing.group(1)}" if where else missing.group(1)
        what = "Field required"
    return invalid(f"{where}: {what}" if where else what, param=where or None)


def decode_body(body: bytes, kind: Any = Any, bad_tag: Callable[[str, str], str | None] | None = None) -> Any:
    """A client's JSON body decoded into ``kind``, every way it can be wrong a 400: empty, not
    JSON, nested deeper than the decoder recurses (``[[[[…`` thousands deep), or not of the
    expected shape (naming the field, see :func:`invalid_field`)."""
    if not body:
        raise invalid("the request body is empty: expected a JSON object")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise invalid_field(exc, bad_tag) from None
    except msgspec.DecodeError as exc:
        raise invalid(f"malformed JSON body: {exc}") from None
    except RecursionError:
        raise invalid("the JSON body is nested too deeply (more than about 1000 levels)") from None
