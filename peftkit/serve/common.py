"""What the app's routes share: the limits, the one-line JSON error, queueing a job, picking the run a request
names. Its own module so the OpenAI routes and the app's own can both use it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException

from peftkit.inference.runs import ServedRun
from peftkit.serve.batcher import Batcher, Job, Overloaded, ShuttingDown


@dataclass
class Limits:
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 512
    """Texts waiting for the worker before new requests get 503."""
    max_texts: int = 64
    max_text_chars: int = 10_000
    max_body_bytes: int = 1 << 20
    timeout_s: float = 60.0
    max_new_tokens: int = 512


class ApiError(HTTPException):
    """A 4xx/5xx answered as one line of JSON: {"error": {"message": ..., "type": ...}} (OpenAI's shape)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", headers=None):
        super().__init__(status, message, headers)
        self.kind = kind


async def run_job(batcher: Batcher, job: Job, limits: Limits) -> Any:
    """Queue a job and await its result, turning overload, shutdown and timeouts into HTTP answers."""
    import asyncio

    try:
        batcher.put(job)
    except Overloaded:
        raise ApiError(503, "server overloaded: too many texts queued; retry shortly", "overloaded",
                       headers={"Retry-After": "1"}) from None
    except ShuttingDown:
        raise ApiError(503, "server shutting down", "unavailable", headers={"Retry-After": "5"}) from None
    try:
        return await batcher.result(job, limits.timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(504, f"request took longer than {limits.timeout_s:g} s", "timeout") from None


def pick_run(runs: dict[str, ServedRun], name: str | None, use: str) -> ServedRun:
    able = [r for r in runs.values() if (r.classifies if use == "classify" else r.generates)]
    if name is None:
        if len(able) == 1:
            return able[0]
        raise ApiError(400, "model: required when serving several models (GET /v1/models lists them)")
    run = runs.get(name)
    if run is None:
        raise ApiError(404, f"model {name!r} is not served here; served: {', '.join(runs)}", "model_not_found")
    if run not in able:
        where = "POST /v1/completions or /v1/chat/completions" if run.generates else "POST /v1/classify"
        raise ApiError(400, f"model {name!r} is a task {run.task} run; use {where}")
    return run
