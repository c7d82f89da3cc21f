"""OpenAI-compatible /v1/completions and /v1/chat/completions for causal-LM runs, plain and streamed (SSE).

The request and answer shapes follow OpenAI's API, so the `openai` client works against the server. Supported:
model, prompt / messages, max_tokens (max_completion_tokens), temperature, top_p, seed, stop, stream, n=1. Fields
the server cannot honour (n > 1, logprobs, echo, best_of, tools) are refused with 400 rather than ignored.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from peftkit.inference.forward import GenerationJob, GenerationResult
from peftkit.inference.runs import ServedRun
from peftkit.serve.batcher import Job
from peftkit.serve.common import ApiError, pick_run, run_job


class Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields of their own (user, metadata, ...)
    model: StrictStr
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: StrictInt = 1
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stream: StrictBool = False
    logprobs: Any = None
    tools: Any = None


class CompletionRequest(Sampling):
    prompt: StrictStr | list[StrictStr]
    echo: StrictBool = False
    best_of: StrictInt | None = None


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: StrictStr


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)


def add_openai_routes(app: FastAPI, guarded: list) -> None:
    @app.post("/v1/completions", dependencies=guarded)
    async def completions(body: CompletionRequest):
        prompt = one_prompt(body)
        run = pick_run(app.state.runs, body.model, "generate")
        ids = run.tokenizer(prompt)["input_ids"]
        return await respond(app, run, body, ids, chat=False, max_tokens=body.max_tokens or 16)

    @app.post("/v1/chat/completions", dependencies=guarded)
    async def chat_completions(body: ChatRequest):
        refuse_unsupported(body)
        run = pick_run(app.state.runs, body.model, "generate")
        if not run.tokenizer.chat_template:
            raise ApiError(400, f"model {run.name!r} has no chat template; use /v1/completions")
        ids = run.tokenizer.apply_chat_template([m.model_dump() for m in body.messages], add_generation_prompt=True,
                                                tokenize=True, return_dict=True)["input_ids"]
        max_tokens = body.max_completion_tokens or body.max_tokens or app.state.limits.max_new_tokens
        return await respond(app, run, body, list(ids), chat=True, max_tokens=max_tokens)


def one_prompt(body: CompletionRequest) -> str:
    refuse_unsupported(body)
    if body.echo or (body.best_of or 1) > 1:
        raise ApiError(400, "echo and best_of are not supported")
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1:
        raise ApiError(400, "prompt: one prompt per request (send several requests; they are served concurrently)")
    if not prompts[0]:
        raise ApiError(400, "prompt is empty")
    return prompts[0]


def refuse_unsupported(body: Sampling) -> None:
    if body.n != 1:
        raise ApiError(400, "n: only n=1 is supported")
    if body.logprobs not in (None, False) or body.tools:
        raise ApiError(400, "logprobs and tools are not supported")


async def respond(app: FastAPI, run: ServedRun, body: Sampling, ids: list[int], chat: bool, max_tokens: int):
    limits = app.state.limits
    if max_tokens > limits.max_new_tokens:
        raise ApiError(400, f"max_tokens {max_tokens} is over this server's limit of {limits.max_new_tokens}")
    context = getattr(run.group.model.config, "max_position_embeddings", None)
    if context and len(ids) + max_tokens > context:
        raise ApiError(400, f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                            f"context of {context} tokens")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    gen = GenerationJob(run=run, prompt_ids=ids, max_new_tokens=max_tokens, temperature=body.temperature,
                        top_p=body.top_p, seed=body.seed, stop=stop)
    job = Job(key=("generate", run.name), payload=gen, size=1)
    gen.cancelled = lambda: job.cancelled
    shape = Shape(run.name, chat)
    if not body.stream:
        result: GenerationResult = await run_job(app.state.batcher, job, limits)
        return shape.whole(result)
    pieces: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()
    gen.emit = lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)
    waiting = asyncio.ensure_future(run_job(app.state.batcher, job, limits))
    await asyncio.sleep(0)  # queue the job now, so overload is a 503 before the stream starts
    if waiting.done() and waiting.exception() is not None:
        raise waiting.exception()
    return StreamingResponse(stream(shape, waiting, pieces, job), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def stream(shape: Shape, waiting: asyncio.Future, pieces: asyncio.Queue, job: Job):
    """SSE events: text pieces as the worker produces them, a last chunk with finish_reason, then [DONE]."""
    try:
        if shape.chat:
            yield sse(shape.chunk({"role": "assistant", "content": ""}, None))
        while True:
            getter = asyncio.ensure_future(pieces.get())
            await asyncio.wait({getter, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                break
            yield sse(shape.chunk(getter.result(), None))
        while not pieces.empty():
            yield sse(shape.chunk(pieces.get_nowait(), None))
        try:
            result = waiting.result()
        except ApiError as e:
            yield sse({"error": {"message": str(e.detail), "type": e.kind}})
        else:
            yield sse(shape.chunk(None, result.finish_reason, usage=shape.usage(result)))
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled = True  # the client went away (or all is sent): generation stops at its next token


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


class Shape:
    """OpenAI's answer objects for one request (text_completion or chat.completion)."""

    def __init__(self, model: str, chat: bool):
        self.model, self.chat = model, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def usage(self, r: GenerationResult) -> dict[str, int]:
        return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                "total_tokens": r.prompt_tokens + r.completion_tokens}

    def whole(self, r: GenerationResult) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": r.text}, "logprobs": None,
                      "finish_reason": r.finish_reason}
        else:
            choice = {"index": 0, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice], "usage": self.usage(r)}

    def chunk(self, content: Any, finish: str | None, usage: dict | None = None) -> dict[str, Any]:
        if self.chat:
            delta = content if isinstance(content, dict) else ({"content": content} if content is not None else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": content or "", "logprobs": None, "finish_reason": finish}
        out = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
               "created": self.created, "model": self.model, "choices": [choice]}
        if usage is not None:
            out["usage"] = usage
        return out
