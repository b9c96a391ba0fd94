"""The OpenAI-compatible HTTP server: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.

Each request is validated (pydantic), its media prepared in a thread pool through the
modalities' API part types (each declared by its plugin's spec: ``image_url`` by vision, a third party's own), then queued
for the single model :class:`~omnimodal.serving.worker.Worker`. Bad requests get OpenAI's
error shape with a 4xx status; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from omnimodal.errors import (
    ConfigError,
    DataError,
    MediaError,
    OmnimodalError,
    SampleTooLongError,
    SpliceError,
)
from omnimodal.inference import Completion, GenerationOptions, Pipeline, TextStream
from omnimodal.serving.schema import ChatCompletionRequest, error_body
from omnimodal.serving.worker import Job, Worker

log = logging.getLogger(__name__)


@dataclass
class ServerSettings:
    """Limits and options of the server (each one is a ``omnimodal serve`` flag)."""

    model_name: str = "omnimodal"
    max_request_bytes: int = 20 * 2**20
    max_media_items: int = 8
    max_tokens: int = 512
    default_max_tokens: int = 128
    allow_remote_media: bool = False
    remote_timeout_s: float = 10.0
    max_batch_size: int = 8
    max_queue: int = 256


class APIError(Exception):
    """An error answered with ``status`` and OpenAI's error body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> JSONResponse:
    # Media decoders name in-memory buffers by their repr (an address): say "the data" instead.
    return JSONResponse(error_body(_OBJECT_REPR.sub("the data", message), type_, param, code), status_code=status)


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413 (read, never buffered past it)."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > self.limit
        body = bytearray()
        seen = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                too_big = True
            if not too_big:
                body += chunk
            # Drain (and drop) a moderately oversized body so the client reads our 413 cleanly.
            if not message.get("more_body", False) or seen > 4 * self.limit + 2**20:
                break
        if too_big:
            size = declared.decode() if declared is not None else f"more than {self.limit}"
            response = _error(413, f"request body of {size} bytes exceeds the server's limit of {self.limit} bytes", param=None, code="request_too_large")
            await response(scope, receive, send)
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_app(pipeline: Pipeline, settings: ServerSettings | None = None) -> FastAPI:
    """Build the FastAPI app serving ``pipeline`` (the worker starts with the app)."""
    from contextlib import asynccontextmanager

    settings = settings or ServerSettings()
    worker = Worker(pipeline, settings.max_batch_size)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="omnimodal", version="1", lifespan=lifespan)
    app.state.pipeline, app.state.settings, app.state.worker = pipeline, settings, worker
    fetch = _remote_fetcher(settings) if settings.allow_remote_media else None

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.type, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return _error(400, f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'decode error')})", code="json_invalid")
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        where = f" at {param}" if param else ""
        return _error(400, f"invalid request{where}: {first.get('msg', 'bad value')}", param=param, code=str(first.get("type")) if first else None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", type_)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # Never echo exception text, stacks or paths to a client: the log has them, under an id.
        incident = uuid.uuid4().hex[:12]
        log.exception("internal error %s on %s", incident, request.url.path)
        return _error(500, f"internal server error (incident {incident}; details are in the server log)", "server_error")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": settings.model_name, "pending": worker.pending}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": settings.model_name, "object": "model", "created": created, "owned_by": "omnimodal",
                "modalities": {n: {"part_type": m.part_type, "api_part_types": list(m.spec.api_part_types)} for n, m in pipeline.modalities.items()}}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        if body.model != settings.model_name:
            raise APIError(404, f"the model {body.model!r} does not exist; this server serves {settings.model_name!r}", param="model", code="model_not_found")
        _check_text(body.model_dump(exclude_none=True))
        try:
            options = _options(body, settings)
        except ConfigError as exc:
            raise APIError(400, str(exc)) from exc
        messages = [m.as_record() for m in body.messages]
        try:
            prompt = await run_in_threadpool(pipeline.prepare, messages, None, "request", True, settings.max_media_items, fetch)
            pipeline.check_length(prompt, options.max_new_tokens)
        except SampleTooLongError as exc:
            raise APIError(400, str(exc), param="messages", code="context_length_exceeded") from exc
        except MediaError as exc:
            raise APIError(400, str(exc), param="messages", code="invalid_media") from exc
        except (DataError, SpliceError, ConfigError) as exc:
            raise APIError(400, str(exc), param="messages") from exc
        if worker.pending >= settings.max_queue:
            raise APIError(503, f"the server is busy ({worker.pending} requests waiting); retry later", "server_error", code="overloaded")
        loop = asyncio.get_running_loop()
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            job = Job(prompt, options, loop, pieces=asyncio.Queue())
            worker.submit(job)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_sse(job, rid, settings.model_name, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        job = Job(prompt, options, loop, future=loop.create_future())
        worker.submit(job)
        try:
            result: Completion = await job.future
        except OmnimodalError as exc:
            raise APIError(400, str(exc)) from exc
        finally:
            job.cancel.set()
        return {
            "id": rid, "object": "chat.completion", "created": int(time.time()), "model": settings.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "logprobs": {"content": result.logprobs, "refusal": None} if body.logprobs else None, "finish_reason": result.finish_reason}],
            "usage": _usage(result.prompt_tokens, result.completion_tokens),
        }

    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    return app


def _check_text(value: Any, path: str = "") -> None:
    """Every string of the request must be encodable as UTF-8.

    JSON may carry lone UTF-16 surrogates (``"\\ud800"``); Python decodes them into strings
    that tokenizers and chat templates refuse with a ``TypeError`` deep inside.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise APIError(400, f"{path or 'body'}: text is not valid UTF-8 (a lone UTF-16 surrogate at character {exc.start})",
                           param=path or None, code="invalid_text") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, path)
            _check_text(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_text(item, f"{path}.{i}")


def _options(body: ChatCompletionRequest, settings: ServerSettings) -> GenerationOptions:
    if body.n != 1:
        raise APIError(400, "only n=1 is supported", param="n", code="unsupported_parameter")
    refused = body.unsupported()
    if refused is not None:
        raise APIError(400, f"{refused[1]}; remove '{refused[0]}' from the request", param=refused[0], code="unsupported_parameter")
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
    if body.logprobs and body.stream:
        raise APIError(400, "logprobs are not supported with stream=true; ask without streaming", param="logprobs", code="unsupported_parameter")
    max_tokens = body.max_completion_tokens or body.max_tokens or min(settings.default_max_tokens, settings.max_tokens)
    if max_tokens > settings.max_tokens:
        raise APIError(400, f"max_tokens={max_tokens} exceeds this server's limit of {settings.max_tokens}", param="max_tokens")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4 or any(not s for s in stop):
        raise APIError(400, "stop takes up to 4 non-empty strings", param="stop")
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    top_logprobs = (body.top_logprobs or 0) if body.logprobs else None
    return GenerationOptions(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=tuple(stop), seed=body.seed, top_logprobs=top_logprobs)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


async def _sse(job: Job, rid: str, model: str, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``."""
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, value = await job.pieces.get()
            if kind == "piece":
                yield chunk({"content": value})
            elif kind == "end":
                stream: TextStream = value
                yield chunk({}, stream.finish_reason or "stop")
                if include_usage:
                    usage = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
                             "usage": _usage(stream.prompt_tokens, stream.completion_tokens)}
                    yield f"data: {json.dumps(usage)}\n\n"
                break
            else:
                err = value
                if isinstance(err, OmnimodalError):
                    body = error_body(str(err), "invalid_request_error")
                else:  # never echo an unexpected exception's text to the client
                    log.error("generation failed for %s: %s: %s", rid, type(err).__name__, err)
                    body = error_body(f"internal server error while generating (request {rid}; details are in the server log)", "server_error")
                yield f"data: {json.dumps(body)}\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancel.set()  # client gone or stream done: stop generating


def _remote_fetcher(settings: ServerSettings):
    """``fetch(url) -> bytes`` for ``--allow-remote-media``, bounded in time and size."""
    import httpx

    def fetch(url: str) -> bytes:
        try:
            with httpx.stream("GET", url, timeout=settings.remote_timeout_s, follow_redirects=True) as response:
                response.raise_for_status()
                data = bytearray()
                for part in response.iter_bytes():
                    data += part
                    if len(data) > settings.max_request_bytes:
                        raise MediaError(f"{url}: remote media larger than {settings.max_request_bytes} bytes")
                return bytes(data)
        except httpx.HTTPError as exc:
            raise MediaError(f"{url}: cannot fetch remote media ({type(exc).__name__}: {exc})") from exc

    return fetch


def serve(pipeline: Pipeline, settings: ServerSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run the server with uvicorn until interrupted."""
    import uvicorn

    app = create_app(pipeline, settings)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
