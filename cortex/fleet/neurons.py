"""Talking to neurons over the fleet contract (contracts §3): polls, loads, unloads, endpoints,
token counts.

One shared aiohttp session (its connector is the connection pool). Timeouts bound connecting
and silence between reads, never the total time, except where a call is a quick poll.
"""

from __future__ import annotations

from urllib.parse import quote

import aiohttp
import msgspec

from cortex.protocol.auth import key_headers
from cortex.protocol.errors import ApiError, kind_of_status
from cortex.protocol.fleet import Discovery, Endpoint, Footprint, Health, ModelInfo, ModelSpec, TokenCount

TOKENIZE_TIMEOUT_SECS = 30.0  # a first count reads the tokenizer files; long prompts take a while


class NeuronUnreachable(Exception):
    """The neuron did not answer (connection refused, reset, timed out)."""


def _message(body: bytes) -> str:
    try:
        err = msgspec.json.decode(body).get("error")
        return err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except (msgspec.DecodeError, AttributeError):
        return body[:200].decode(errors="replace")


class NeuronClient:
    """Calls to neurons by their base URL; ``keys`` maps a base URL to the fleet key that neuron
    wants (``[[neurons]] api_key``)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        poll_timeout_secs: float,
        load_timeout_secs: float,
        keys: dict[str, str] | None = None,
    ) -> None:
        self.session = session
        self.keys = dict(keys or {})
        self.poll_timeout = aiohttp.ClientTimeout(total=poll_timeout_secs)
        self.load_timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=load_timeout_secs)
        self.tokenize_timeout = aiohttp.ClientTimeout(total=TOKENIZE_TIMEOUT_SECS)

    def _headers(self, base: str, **extra: str) -> dict[str, str]:
        return {**extra, **key_headers(self.keys.get(base))}

    async def _get(self, base: str, path: str, kind):
        url = base + path
        try:
            async with self.session.get(url, headers=self._headers(base), timeout=self.poll_timeout) as r:
                body = await r.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise NeuronUnreachable(f"{url}: {type(exc).__name__}: {exc}") from None
        self._check_key(url, r.status, body)
        if r.status != 200:
            raise NeuronUnreachable(f"{url}: HTTP {r.status}: {_message(body)}")
        try:
            return msgspec.json.decode(body, type=kind)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise NeuronUnreachable(f"{url}: malformed answer: {exc}") from None

    async def discovery(self, base: str) -> Discovery:
        return await self._get(base, "/discovery", Discovery)

    async def health(self, base: str) -> Health:
        return await self._get(base, "/health", Health)

    async def models(self, base: str) -> list[ModelInfo]:
        return await self._get(base, "/models", list[ModelInfo])

    async def endpoint(self, base: str, model: str) -> str:
        answer = await self._get(base, f"/models/{quote(model, safe='')}/endpoint", Endpoint)
        return answer.url.rstrip("/")

    async def load(self, base: str, spec: ModelSpec) -> None:
        """Asks the neuron to load ``spec``: with ``wait: false`` it answers at once and loads in the
        background (the gateway then follows ``/models``), else once resident. Raises ApiError
        with the neuron's status and message."""
        await self._post(base, "/models/load", msgspec.json.encode(spec), self.load_timeout)

    async def tokenize(self, base: str, body: bytes) -> int:
        """The prompt's token count (neuron ``/tokenize``); raises ApiError with the neuron's status."""

        answer = await self._post(base, "/tokenize", body, self.tokenize_timeout)
        try:
            return msgspec.json.decode(answer, type=TokenCount).count
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise NeuronUnreachable(f"{base}/tokenize: malformed answer: {exc}") from None

    async def footprint(self, base: str, model: str, quant: str | None = None) -> tuple[int, int]:
        """The neuron's estimate of what ``model`` needs there (quantized to ``quant``), from its
        weight files: (CPU MB, GPU MB)."""

        try:
            async with self.session.get(
                f"{base}/models/{quote(model, safe='')}/footprint",
                params={"quant": quant} if quant else None,
                headers=self._headers(base),
                timeout=self.poll_timeout,
            ) as r:
                body = await r.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise NeuronUnreachable(f"{base}: {type(exc).__name__}: {exc}") from None
        if r.status != 200:
            raise ApiError(kind_of_status(r.status, upstream=True), _message(body), status=r.status)
        try:
            answer = msgspec.json.decode(body, type=Footprint)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise NeuronUnreachable(f"{base}: malformed footprint: {exc}") from None
        return answer.cpu_mb, answer.gpu_mb

    async def restart(self, base: str) -> None:
        """Asks the neuron to drain, restart cleanly and load its models again (defragmentation)."""
        await self._post(base, "/admin/restart", b"{}", self.load_timeout)

    async def unload(self, base: str, model: str) -> None:
        await self._post(base, "/models/unload", msgspec.json.encode({"model_id": model}), self.load_timeout)

    async def _post(self, base: str, path: str, body: bytes, timeout: aiohttp.ClientTimeout) -> bytes:
        url = base + path
        headers = self._headers(base, **{"content-type": "application/json"})
        try:
            async with self.session.post(url, data=body, headers=headers, timeout=timeout) as r:
                answer = await r.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise NeuronUnreachable(f"{url}: {type(exc).__name__}: {exc}") from None
        self._check_key(url, r.status, answer)
        if r.status >= 400:
            raise ApiError(kind_of_status(r.status, upstream=True), _message(answer), status=r.status)
        return answer

    @staticmethod
    def _check_key(url: str, status: int, body: bytes) -> None:
        """A neuron that refuses the gateway's key is unusable, not the client's problem."""
        if status in (401, 403):
            raise NeuronUnreachable(
                f"{url}: the neuron refused the gateway's key (HTTP {status}: {_message(body)}); "
                "set [[neurons]] api_key to its neuron.toml api_key"
            )
