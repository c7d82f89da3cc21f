"""The FastAPI app: /v1/classify, OpenAI-compatible completions (openai_api.py), /v1/models, /health, /metrics
and the page at /. Models are loaded before the app is built, so the port opens only once they are ready."""

from __future__ import annotations

import hmac
import time
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, StrictStr
from starlette.exceptions import HTTPException

from peftkit.inference.forward import Forward, classify_generative, classify_head, generate
from peftkit.inference.runs import ServedRun
from peftkit.serve.batcher import Batcher, Job
from peftkit.serve.common import ApiError, Limits, pick_run, run_job  # noqa: F401 (Limits: the app's API)
from peftkit.serve.metrics import Metrics

PAGE = Path(__file__).with_name("page.html")
API_KEY_ENV = "PEFTKIT_API_KEY"


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: StrictStr | None = None
    text: StrictStr | list[StrictStr]


def create_app(runs: list[ServedRun], limits: Limits, api_key: str | None = None) -> FastAPI:
    """The app around loaded runs. `api_key`: required as `Authorization: Bearer KEY` on everything but / and
    /health (compared in constant time, never logged)."""
    from contextlib import asynccontextmanager

    metrics = Metrics()
    batcher = Batcher(make_runner(runs, limits, metrics), limits.max_batch_size, limits.max_wait_ms,
                      limits.max_queue, on_depth=metrics.queue_depth.set)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        batcher.stop(timeout=limits.timeout_s)  # uvicorn has already let in-flight requests finish

    app = FastAPI(title="peftkit serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runs = {r.name: r for r in runs}
    app.state.limits, app.state.batcher, app.state.metrics = limits, batcher, metrics
    install_errors(app, metrics)
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    app.add_middleware(Observe, metrics=metrics)
    guarded = [Depends(key_checker(api_key))]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(app.state.runs)}

    @app.get("/v1/models", dependencies=guarded)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [r.describe() for r in runs]}

    @app.get("/metrics", dependencies=guarded)
    async def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.post("/v1/classify", dependencies=guarded)
    async def classify(body: ClassifyRequest) -> dict[str, Any]:
        run = pick_run(app.state.runs, body.model, "classify")
        texts = check_texts(body.text, limits)
        key = ("head", run.group.index) if run.group.head else ("gencls", run.name)
        probs = await run_job(batcher, Job(key=key, payload=[(run, t) for t in texts], size=len(texts)), limits)
        return {"model": run.name, "results": [answer(run, p) for p in probs]}

    from peftkit.serve.openai_api import add_openai_routes

    add_openai_routes(app, guarded)
    return app


def answer(run: ServedRun, probs: list[float]) -> dict[str, Any]:
    best = max(range(len(probs)), key=probs.__getitem__)
    return {"label": run.labels[best], "probabilities": dict(zip(run.labels, probs)), "model": run.name}


def make_runner(runs: list[ServedRun], limits: Limits, metrics: Metrics):
    """run_batch(key, jobs) for the batcher: one result per job, computed on the worker thread."""
    by_name = {r.name: r for r in runs}
    groups = {r.group.index: r.group for r in runs}

    def on_forward(kind: str):
        def record(f: Forward) -> None:
            metrics.batch_rows.labels(kind).observe(f.rows)
            if f.adapters > 1:
                metrics.mixed.inc()
        return record

    def run_batch(key: tuple, jobs: list[Job]) -> list[Any]:
        kind, which = key
        if kind == "generate":
            return [generate(job.payload) for job in jobs]
        items = [item for job in jobs for item in job.payload]
        if kind == "head":
            probs = classify_head(groups[which], items, limits.max_batch_size, on_forward(kind))
        else:
            probs = classify_generative(by_name[which], [t for _, t in items], limits.max_batch_size,
                                        on_forward(kind))
        out, start = [], 0
        for job in jobs:
            out.append(probs[start:start + job.size])
            start += job.size
        return out

    return run_batch


def check_texts(text: str | list[str], limits: Limits) -> list[str]:
    texts = [text] if isinstance(text, str) else text
    if not texts:
        raise ApiError(400, "text: give a string or a non-empty list of strings")
    if len(texts) > limits.max_texts:
        raise ApiError(400, f"text: {len(texts)} texts in one request; at most {limits.max_texts}")
    for i, t in enumerate(texts):
        where = "text" if isinstance(text, str) else f"text[{i}]"
        if not t.strip():
            raise ApiError(400, f"{where} is empty")
        if len(t) > limits.max_text_chars:
            raise ApiError(400, f"{where} has {len(t)} characters; at most {limits.max_text_chars}")
    return texts


def key_checker(api_key: str | None):
    async def check(request: Request) -> None:
        if not api_key:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        if not hmac.compare_digest(token.encode(), api_key.encode()):
            raise ApiError(401, f"missing or wrong API key (send Authorization: Bearer <{API_KEY_ENV}>)",
                           "authentication_error")
    return check


def error_response(status: int, message: str, kind: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"message": " ".join(str(message).split()), "type": kind}}, status_code=status,
                        headers=headers)


def install_errors(app: FastAPI, metrics: Metrics) -> None:
    """Every error is one line of JSON. FastAPI's 422 with a list of details becomes a 400 naming the first."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        kind = getattr(e, "kind", {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
                       .get(e.status_code, "invalid_request_error"))
        metrics.errors.labels(kind).inc()
        return error_response(e.status_code, e.detail, kind, getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        metrics.errors.labels("invalid_request_error").inc()
        return error_response(400, validation_message(e.errors()), "invalid_request_error")

    @app.exception_handler(Exception)
    async def crashed(request: Request, e: Exception) -> JSONResponse:
        metrics.errors.labels("server_error").inc()
        return error_response(500, f"internal error: {type(e).__name__}: {e}", "server_error")


def validation_message(errors: list[dict]) -> str:
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return f"malformed JSON body: {first.get('ctx', {}).get('error', first.get('msg', ''))}"
    fields = list(dict.fromkeys(field_of(e) for e in errors))  # a union type reports once per alternative
    if fields == ["body"] and first.get("type") in ("model_attributes_type", "dict_type"):
        return "the body must be a JSON object, sent with Content-Type: application/json"
    same = [e for e in errors if field_of(e) == fields[0]]
    msg = first.get("msg", "invalid") if len(same) == 1 else f"wrong type ({type(first.get('input')).__name__})"
    more = f" (and {len(fields) - 1} more problems)" if len(fields) > 1 else ""
    return f"{fields[0]}: {msg}{more}"


def field_of(error: dict) -> str:
    """'text', 'messages.0.role': the location without pydantic's type-alternative parts."""
    loc = [str(p) for p in error.get("loc", ()) if p != "body"]
    return ".".join(p for p in loc if not p.startswith(("str", "list[", "function-", "int", "bool"))) or "body"


class BodyLimit:
    """Refuses bodies over `limit` bytes with 413: by Content-Length at once, or while reading a chunked body."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            response = error_response(413, f"request body over {self.limit} bytes", "request_too_large")
            return await response(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # FastAPI passes HTTPExceptions from body reading on to the handler
                raise ApiError(413, f"request body over {self.limit} bytes", "request_too_large")
            return message

        await self.app(scope, limited, send)


class Observe:
    """Request count and latency per endpoint and status (a pure ASGI wrapper, so streamed answers count whole)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def watch(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "other")
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
