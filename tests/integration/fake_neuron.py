"""A neuron test double for gateway tests: a small Sanic app that speaks the neuron contract
(cortex.protocol structs) with behaviour the test sets at start and changes through
``POST /_control``: loaded models, load delays and failures, stream speed, dying mid-stream,
garbage answers, and a ``script`` of chat chunks to answer with (streamed as given, or merged
into one completion). It keeps a memory budget like a real neuron: each model has a footprint
(``footprints``, default ``footprint``), loads that do not fit answer 507, loads in progress are
joined, unloads wait for requests in flight, ``/admin/restart`` reloads everything.
``GET /_stats`` reports what it was asked to do, including the last chat and tokenize bodies.

    python fake_neuron.py --name beast --port 17001 --spec '{"devices": [24000], "loaded": ["m"]}'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import msgspec
from sanic import Request, Sanic, response

from cortex.protocol.fleet import (
    CpuInfo,
    DeviceHealth,
    DeviceInfo,
    Discovery,
    Endpoint,
    Footprint,
    Health,
    ModelHealth,
    ModelInfo,
    TokenCount,
)


def build(name: str, port: int, spec: dict) -> Sanic:
    app = Sanic(f"fake_{name.replace('-', '_')}", env_prefix=None, configure_logging=False)
    state = {
        "models": {m: "loaded" for m in spec.get("loaded", [])},
        "load_secs": spec.get("load_secs", 0.2),
        "load_fail": spec.get("load_fail", {}),  # model -> HTTP status to answer a load with
        "token_delay": spec.get("token_delay", 0.01),
        "tokens": spec.get("tokens", 5),
        "die_after": spec.get("die_after"),  # chunks before the process exits mid-stream
        "garbage": spec.get("garbage", False),
        "stall_secs": spec.get("stall_secs", 0),
        "polls_fail": spec.get("polls_fail", False),  # /health answers 503 (a neuron that stopped answering)
        "queue_ms": spec.get("queue_ms", 0.0),  # the admission wait it reports (x-neuron-queue-ms)
        "script": spec.get("script"),  # chat chunks ({"delta", "finish_reason", "stop_reason"}) to answer with
        "error_after": spec.get("error_after"),  # script chunks before an error event
        "prompt_tokens": spec.get("prompt_tokens", 7),
        "tokenize_status": spec.get("tokenize_status", 200),
        "last_body": None,
        "last_tokenize": None,
        "loads": [],
        "load_starts": [],  # loads that really started (not joined, not refused)
        "unloads": [],
        "requests": 0,
        "footprints": spec.get("footprints", {}),
        "footprint": spec.get("footprint", 4000),
        "placed": {},  # model -> devices it occupies ([] = host memory)
        "in_flight": {},
        "progress": {},
        "restart_secs": spec.get("restart_secs", 0.3),
        "restarts": 0,
        "restarting": False,
    }
    devices = spec.get("devices", [24000])
    memory_mb = spec.get("memory_mb", 64000)
    for m in state["models"]:
        state["placed"][m] = [0] if devices else []
    started = time.monotonic()

    def encode(obj) -> response.HTTPResponse:
        return response.raw(msgspec.json.encode(obj), content_type="application/json")

    @app.get("/discovery")
    async def discovery(request: Request):
        return encode(
            Discovery(
                hostname=name,
                os="Linux",
                kernel="test",
                cuda_version="13.0" if devices else None,
                driver_version="580" if devices else None,
                devices=[
                    DeviceInfo(index=i, name="Fake GPU", vram_total_mb=v, compute_capability="8.9")
                    for i, v in enumerate(devices)
                ],
                cpu=CpuInfo(cores=8, memory_total_mb=spec.get("memory_mb", 64000)),
                harnesses=["torch"],
                version="fake",
            )
        )

    def footprint(model: str) -> int:
        return state["footprints"].get(model, state["footprint"])

    def used() -> tuple[dict[int, int], int]:
        """MB in use per device and on the host, by every model resident or loading."""
        per = dict.fromkeys(range(len(devices)), 0)
        host = 0
        for m, devs in state["placed"].items():
            if not devs:
                host += footprint(m)
            for d in devs:
                per[d] += footprint(m) // len(devs)
        return per, host

    @app.get("/health")
    async def health(request: Request):
        if state["polls_fail"]:
            return response.json({"error": {"message": "not answering", "type": "x"}}, status=503)
        per, host = used()
        return encode(
            Health(
                uptime_secs=time.monotonic() - started,
                devices=[
                    DeviceHealth(
                        index=i, vram_used_mb=per[i], vram_free_mb=max(0, v - per[i]), utilization_pct=0, temp_c=40
                    )
                    for i, v in enumerate(devices)
                ],
                memory_free_mb=max(0, memory_mb - host),
                models={
                    m: ModelHealth(status=s, in_flight=state["in_flight"].get(m, 0), queued=0)
                    for m, s in state["models"].items()
                },
            )
        )

    @app.get("/models")
    async def models(request: Request):
        return encode(
            [
                ModelInfo(
                    id=m,
                    harness="torch",
                    status="loading" if s in ("loading", "unloading") else s,
                    devices=state["placed"].get(m, []),
                    vram_used_mb=footprint(m) if s == "loaded" else None,
                    quant=None,
                    context_length=4096,
                    load_progress=1.0 if s == "loaded" else state["progress"].get(m, 0.0),
                    error=None,
                )
                for m, s in state["models"].items()
            ]
        )

    async def finish_load(model: str, secs: float) -> None:
        steps = 5
        for i in range(steps):
            await asyncio.sleep(secs / steps)
            state["progress"][model] = (i + 1) / steps
        state["models"][model] = "loaded"

    @app.post("/models/load")
    async def load(request: Request):
        body = json.loads(request.body)
        model = body["model_id"]
        wait = body.get("wait", True)
        state["loads"].append(body)
        if model in state["load_fail"]:
            status = state["load_fail"][model]
            return response.json({"error": {"message": f"fake failure {status}", "type": "x"}}, status=status)
        if state["models"].get(model) == "loaded":
            return response.json({"status": "loaded"})
        if state["models"].get(model) != "loading":
            devs = body.get("devices")
            devs = ([0] if devices else []) if devs is None else devs
            per, host = used()
            need = footprint(model)
            if devs:
                short = [d for d in devs if per[d] + need // len(devs) > devices[d]]
                free = min(devices[d] - per[d] for d in devs)
            else:
                short = [0] if host + need > memory_mb else []
                free = memory_mb - host
            if short:
                message = f"model {model!r} needs about {need} MiB but {free} MiB are free"
                return response.json({"error": {"message": message, "type": "x", "code": "does_not_fit"}}, status=507)
            state["placed"][model] = devs
            state["models"][model] = "loading"
            state["progress"][model] = 0.0
            state["load_starts"].append(model)
            app.add_task(finish_load(model, state["load_secs"]))
        if not wait:
            return response.json({"status": "loading"}, status=202)
        while state["models"].get(model) == "loading":
            await asyncio.sleep(0.01)
        return response.json({"status": "loaded"})

    @app.post("/models/unload")
    async def unload(request: Request):
        model = json.loads(request.body)["model_id"]
        state["unloads"].append(model)
        if state["models"].get(model) not in ("loaded", "loading"):
            return response.json({"error": {"message": "not loaded", "type": "not_found_error"}}, status=404)
        state["models"][model] = "unloading"
        while state["in_flight"].get(model, 0):
            await asyncio.sleep(0.01)
        state["models"].pop(model, None)
        state["placed"].pop(model, None)
        return response.json({"status": "unloaded"})

    async def restart() -> None:
        state["restarting"] = True
        while any(state["in_flight"].values()):
            await asyncio.sleep(0.01)
        for m in state["models"]:
            state["models"][m] = "loading"
        await asyncio.sleep(state["restart_secs"])
        for m in state["models"]:
            state["models"][m] = "loaded"
        state["restarting"] = False
        state["restarts"] += 1

    @app.post("/admin/restart")
    async def admin_restart(request: Request):
        app.add_task(restart())
        return response.json({"status": "restarting", "models": list(state["models"])}, status=202)

    @app.get("/models/<rest:path>")
    async def model_route(request: Request, rest: str):
        rest = rest.replace("%2F", "/")
        if rest.endswith("/footprint"):
            model = rest.removesuffix("/footprint")
            need = footprint(model)
            return encode(Footprint(model_id=model, cpu_mb=need, gpu_mb=need))
        model = rest.removesuffix("/endpoint")
        if state["models"].get(model) != "loaded":
            return response.json({"error": {"message": "not loaded"}}, status=404)
        return encode(Endpoint(url=f"http://127.0.0.1:{port}"))

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = json.loads(request.body)
        state["last_tokenize"] = body
        if state["tokenize_status"] != 200:
            return response.json({"error": {"message": "no files here", "type": "x"}}, status=state["tokenize_status"])
        return encode(TokenCount(count=state["prompt_tokens"], max_context=4096))

    def merged(script: list[dict]) -> dict:
        """A whole completion's message and finish from a chunk script."""
        message: dict = {"role": "assistant", "content": None}
        calls: dict[int, dict] = {}
        for c in script:
            d = c.get("delta", {})
            for key in ("content", "reasoning_content"):
                if d.get(key):
                    message[key] = (message.get(key) or "") + d[key]
            for t in d.get("tool_calls", []):
                call = calls.setdefault(t["index"], {"id": t.get("id"), "type": "function", "function": {}})
                fn = t.get("function", {})
                if fn.get("name"):
                    call["function"]["name"] = fn["name"]
                call["function"]["arguments"] = call["function"].get("arguments", "") + (fn.get("arguments") or "")
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        last = script[-1]
        return {
            "index": 0,
            "message": message,
            "finish_reason": last.get("finish_reason"),
            "stop_reason": last.get("stop_reason"),
        }

    @app.post("/v1/chat/completions")
    @app.post("/v1/completions", name="completions")
    async def generate(request: Request):
        state["requests"] += 1
        body = json.loads(request.body)
        state["last_body"] = body
        model = body["model"]
        if state["restarting"]:
            err = {"message": "restarting", "type": "x", "code": "neuron_restarting"}
            return response.json({"error": err}, status=503)
        if state["models"].get(model) == "unloading":
            err = {"message": f"model {model!r} is unloading", "type": "x", "code": "model_unloading"}
            return response.json({"error": err}, status=503)
        if state["models"].get(model) != "loaded":
            return response.json({"error": {"message": f"model {model!r} is not loaded", "type": "x"}}, status=404)
        state["in_flight"][model] = state["in_flight"].get(model, 0) + 1
        try:
            return await answer(request, body, model)
        finally:
            state["in_flight"][model] -= 1

    async def answer(request: Request, body: dict, model: str):
        if state["garbage"]:
            return response.raw(b"<html>definitely not json", content_type="text/html")
        text = f"reply from {name}"
        script = state["script"]
        completion = state["tokens"] if script is None else len(script)
        prompt = state["prompt_tokens"]
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        steps = max(0, completion - 1)  # the neuron's own timing, as a real one reports it
        timings = {
            "prompt_n": prompt,
            "prompt_ms": 1.0,
            "predicted_n": steps,
            "predicted_ms": steps * state["token_delay"] * 1000,
        }
        queued = {"x-neuron-queue-ms": str(state["queue_ms"])}
        if not body.get("stream"):
            await asyncio.sleep(state["token_delay"] * completion)
            choice = (
                merged(script)
                if script
                else {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            )
            return response.json(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": 0,
                    "model": model,
                    "choices": [choice],
                    "usage": usage,
                    "timings": timings,
                },
                headers=queued,
            )
        resp = await request.respond(content_type="text/event-stream", headers=queued)
        continuous = bool((body.get("stream_options") or {}).get("continuous_usage_stats"))

        def chunk(delta: dict, finish=None, with_usage=False, done=0, stop_reason=None) -> bytes:
            obj = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if stop_reason is not None:
                obj["choices"][0]["stop_reason"] = stop_reason
            if with_usage:
                obj["usage"], obj["timings"] = usage, timings
            elif continuous:
                obj["usage"] = {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        await resp.send(chunk({"role": "assistant", "content": ""}))
        if script is not None:
            for i, c in enumerate(script):
                if state["error_after"] is not None and i >= state["error_after"]:
                    err = {"error": {"message": "fake failure mid-stream", "type": "server_error"}}
                    await resp.send(b"data: " + json.dumps(err).encode() + b"\n\n")
                    await resp.eof()
                    return None
                await asyncio.sleep(state["token_delay"])
                final = c.get("finish_reason") is not None
                await resp.send(chunk(c.get("delta", {}), c.get("finish_reason"), final, i + 1, c.get("stop_reason")))
        else:
            for i in range(state["tokens"]):
                if state["die_after"] is not None and i >= state["die_after"]:
                    os._exit(3)  # the neuron dies mid-stream
                if state["stall_secs"] and i == 1:
                    await asyncio.sleep(state["stall_secs"])
                await asyncio.sleep(state["token_delay"])
                await resp.send(chunk({"content": f"{name}-{i} "}, done=i + 1))
            await resp.send(chunk({}, "stop", with_usage=True))
        await resp.send(b"data: [DONE]\n\n")
        await resp.eof()
        return None

    @app.post("/_control")
    async def control(request: Request):
        state.update(json.loads(request.body))
        return response.json({"ok": True})

    @app.get("/_stats")
    async def stats(request: Request):
        keys = ("loads", "load_starts", "unloads", "requests", "models", "last_body", "last_tokenize", "restarts")
        return response.json({k: state[k] for k in keys})

    return app


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--spec", default="{}")
    a = ap.parse_args()
    build(a.name, a.port, json.loads(a.spec)).run(
        host="127.0.0.1", port=a.port, single_process=True, access_log=False, motd=False
    )
