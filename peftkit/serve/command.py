"""`peftkit serve RUN_DIR [RUN_DIR ...]`: load the runs, then serve them with uvicorn until SIGTERM / Ctrl-C; and
`peftkit generate RUN_DIR TEXT`, one answer from the command line. Their parsers import nothing heavy."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import signal
import sys

from peftkit.errors import PeftkitError


def add_parser(subparsers) -> None:
    add_serve_parser(subparsers)
    add_generate_parser(subparsers)


def add_serve_parser(sub) -> None:
    serve = sub.add_parser(
        "serve", help="serve runs over HTTP: /v1/classify, OpenAI-compatible completions, a page at /",
        description="Serve the trained adapters of RUN_DIRs over HTTP. Runs on the same base model share one copy "
                    "of its weights; concurrent requests are batched. Binds 127.0.0.1 (this machine only) unless "
                    "--host says otherwise; set PEFTKIT_API_KEY to require 'Authorization: Bearer KEY'. SIGTERM "
                    "or Ctrl-C stops it gracefully: requests in flight are answered first.")
    serve.add_argument("runs", metavar="RUN_DIR", nargs="+",
                       help="a train run's output_dir, or NAME=RUN_DIR (the `model` name requests use; default: "
                            "the folder's name)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: localhost only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--max-batch-size", type=positive, default=32, metavar="N",
                       help="texts per forward pass (default 32)")
    serve.add_argument("--max-wait-ms", type=float, default=5.0, metavar="MS",
                       help="longest wait for more requests when a batch is not full (default 5)")
    serve.add_argument("--max-queue", type=positive, default=512, metavar="N",
                       help="texts waiting before new requests get 503 + Retry-After (default 512)")
    serve.add_argument("--max-texts", type=positive, default=64, metavar="N", help="texts per request (default 64)")
    serve.add_argument("--max-text-chars", type=positive, default=10_000, metavar="N",
                       help="characters per text (default 10000)")
    serve.add_argument("--max-body-bytes", type=positive, default=1 << 20, metavar="N",
                       help="request body size limit (default 1 MiB)")
    serve.add_argument("--timeout", type=float, default=60.0, metavar="S", help="per-request time limit (default 60)")
    serve.add_argument("--max-new-tokens", type=positive, default=512, metavar="N",
                       help="largest max_tokens a completion may ask for (default 512)")
    serve.add_argument("--threads", type=positive, metavar="N", help="torch CPU threads (default: torch's own)")
    serve.set_defaults(func=cmd_serve)


def add_generate_parser(sub) -> None:
    generate = sub.add_parser(
        "generate", help="a causal-LM run's answer to a text: label probabilities or generated text",
        description="Answer TEXT with the base model + trained adapter of RUN_DIR. generative_classification runs: "
                    "TEXT goes through the run's data.prompt_template (and the chat template only if the run used "
                    "it) and every label is scored: prints each label name with its probability, the prediction "
                    "first. sft runs: the run's prompt template and chat template as trained, then greedy "
                    "generation.")
    generate.add_argument("run_dir", metavar="RUN_DIR", help="the output_dir of a train run")
    generate.add_argument("prompt", metavar="TEXT",
                          help="the text to classify, or the prompt (the template's one field)")
    generate.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="longest answer (default 128)")
    generate.add_argument("--raw", action="store_true",
                          help="no templates, no label scoring: TEXT as it is, greedy generation (the behaviour "
                               "before templates were applied, without the chat template)")
    generate.set_defaults(func=cmd_generate)


def cmd_generate(args) -> int:
    from peftkit.serve.generate import generate

    print(generate(args.run_dir, args.prompt, args.max_new_tokens, raw=args.raw))
    return 0


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a positive whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a positive whole number")
    return value


def cmd_serve(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise PeftkitError("peftkit serve needs FastAPI and uvicorn: pip install 'peftkit[serve]'") from None
    from peftkit.inference.runs import load_runs
    from peftkit.serve.app import API_KEY_ENV, Limits, create_app

    if args.max_texts > args.max_queue:
        raise PeftkitError(f"--max-texts {args.max_texts} is over --max-queue {args.max_queue}: such requests could "
                           "never be queued")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    api_key = os.environ.get(API_KEY_ENV) or None
    say(exposure(args.host, api_key is not None))
    runs = load_runs(args.runs, say=say)
    limits = Limits(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                    max_texts=args.max_texts, max_text_chars=args.max_text_chars,
                    max_body_bytes=args.max_body_bytes, timeout_s=args.timeout, max_new_tokens=args.max_new_tokens)
    app = create_app(runs, limits, api_key)
    serve(app, args.host, args.port, grace_s=args.timeout + 5)
    answered = app.state.metrics.answered()
    say(f"peftkit serve: stopped; answered {sum(answered.values())} requests "
        f"({', '.join(f'{status}: {n}' for status, n in sorted(answered.items()))})")
    return 0


def exposure(host: str, has_key: bool) -> str:
    """One line on who can reach the server (the key itself is never printed)."""
    key = f"API key required ({'$'}PEFTKIT_API_KEY)" if has_key else "no API key"
    if is_loopback(host):
        return f"peftkit serve: binding {host}: reachable from this machine only; {key}"
    warning = "" if has_key else ". WARNING: anyone who can reach this address can use it; set PEFTKIT_API_KEY"
    return f"peftkit serve: binding {host}: reachable from other machines; {key}{warning}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(app, host: str, port: int, grace_s: float) -> None:
    """uvicorn's own graceful shutdown: on SIGTERM/SIGINT it stops accepting connections, lets requests in flight
    finish (at most grace_s), then runs the app's shutdown (the batcher drains). uvicorn would then re-raise the
    signal, killing the process with it; a service stopped on purpose exits 0 here instead."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=grace_s, lifespan="on")
    server = Server(config)
    say(f"peftkit serve: ready on http://{host}:{port} (page /, POST /v1/classify, /v1/completions, "
        "/v1/chat/completions, GET /v1/models, /health, /metrics)")
    server.run()
    if not server.started:
        raise PeftkitError(f"could not listen on {host}:{port} (in use? see the message above)")


def say(message: str) -> None:
    print(message, file=sys.stderr if message.startswith("WARNING") else sys.stdout, flush=True)
