"""`peftkit serve` against the server a user would write (benchmarks/serving/serve_baseline.py: transformers.pipeline
per request), on the same run folder, both started here on 127.0.0.1, in the same session.

A bounded load test: a fixed number of requests (one SST-2 dev sentence each) at fixed concurrency levels (closed
loop: each of C clients sends its next request when the previous one is answered). Levels and the two servers are
interleaved (baseline, peftkit at every level, the order flipped each round), because the machine is shared and
its speed drifts; ratios of neighbouring measurements are what to read. Peak memory is each server process's
VmHWM (peak resident set) after all rounds.

    python -m peftkit train peftkit/defaults/sst2_quickstart.yaml data.max_train_samples=2000 \\
        output_dir=/tmp/serve-bench-run
    python -m benchmarks.serving.bench_serve --run /tmp/serve-bench-run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
DEV = REPO.parent / "shared" / "data" / "sst2" / "dev.tsv"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name: str, command: list[str], port: int, log_dir: Path, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    env.pop("PEFTKIT_API_KEY", None)
    log = (log_dir / f"{name}.log").open("w")
    return subprocess.Popen([*command, "--port", str(port)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server {url} exited with {proc.returncode}; see its log")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server {url} not ready after {timeout} s")


async def load(url: str, path: str, bodies: list[dict], concurrency: int) -> dict:
    """Send every body once, `concurrency` at a time; per-request latency and the wall time of the whole run."""
    latencies: list[float] = []
    errors = 0
    answers: list[str | None] = [None] * len(bodies)
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        async def one_client() -> None:
            nonlocal next_index, errors
            while next_index < len(bodies):
                i = next_index
                next_index += 1
                started = time.perf_counter()
                try:
                    r = await client.post(path, json=bodies[i])
                except httpx.TransportError:
                    r = None
                latencies.append(time.perf_counter() - started)
                if r is None or r.status_code != 200:
                    errors += 1
                else:
                    body = r.json()
                    answers[i] = body["results"][0]["label"] if "results" in body else body["label"]

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"requests": len(bodies), "errors": errors, "wall_s": wall, "requests_per_s": len(bodies) / wall,
            "texts_per_s": len(bodies) / wall, "p50_ms": 1000 * q[49], "p95_ms": 1000 * q[94],
            "p99_ms": 1000 * q[98], "answers": answers}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(args) -> dict:
    texts = [line.rsplit("\t", 1)[0] for line in DEV.read_text(encoding="utf-8").splitlines()[1:]]
    import tempfile

    log_dir = Path(tempfile.mkdtemp(prefix="bench-serve-logs-"))
    print(f"server logs: {log_dir}", flush=True)
    ports = {"baseline": free_port(), "peftkit": free_port()}
    procs = {
        "baseline": start("baseline", [sys.executable, "-m", "benchmarks.serving.serve_baseline", args.run],
                          ports["baseline"], log_dir, args.threads),
        "peftkit": start("peftkit", [sys.executable, "-m", "peftkit", "serve", f"run={args.run}",
                                     "--max-batch-size", str(args.max_batch_size)], ports["peftkit"], log_dir,
                         args.threads),
    }
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    paths = {"baseline": "/classify", "peftkit": "/v1/classify"}
    bodies = {"baseline": lambda t: {"text": t}, "peftkit": lambda t: {"model": "run", "text": t}}
    rows: list[dict] = []
    try:
        for name in procs:
            wait_ready(urls[name], procs[name])
        for name in procs:  # warm-up, not measured
            asyncio.run(load(urls[name], paths[name], [bodies[name](t) for t in texts[:32]], 4))
        for round_ in range(args.rounds):
            for concurrency in args.concurrency:
                order = ["baseline", "peftkit"] if round_ % 2 == 0 else ["peftkit", "baseline"]
                sample = [texts[(round_ * 997 + i) % len(texts)] for i in range(args.requests)]
                for name in order:
                    result = asyncio.run(load(urls[name], paths[name], [bodies[name](t) for t in sample],
                                              concurrency))
                    rows.append({"server": name, "round": round_, "concurrency": concurrency, **result})
                    print(f"round {round_} c={concurrency:>2} {name:8s} {result['requests_per_s']:7.1f} req/s  "
                          f"p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  "
                          f"errors {result['errors']}", flush=True)
        peaks = {name: peak_rss_mb(proc.pid) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(60)
    return summarize(rows, peaks, args)


def summarize(rows: list[dict], peaks: dict[str, float], args) -> dict:
    levels = []
    for c in args.concurrency:
        entry: dict = {"concurrency": c}
        for name in ("baseline", "peftkit"):
            mine = [r for r in rows if r["server"] == name and r["concurrency"] == c]
            entry[name] = {k: statistics.median(r[k] for r in mine)
                           for k in ("requests_per_s", "texts_per_s", "p50_ms", "p95_ms", "p99_ms")}
            entry[name]["errors"] = sum(r["errors"] for r in mine)
        ratios = []
        for round_ in range(args.rounds):
            pair = {r["server"]: r for r in rows if r["concurrency"] == c and r["round"] == round_}
            ratios.append(pair["peftkit"]["requests_per_s"] / pair["baseline"]["requests_per_s"])
        entry["throughput_ratio"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        same = [a == b for r0 in rows if r0["server"] == "baseline" and r0["concurrency"] == c
                for r1 in rows if r1["server"] == "peftkit" and r1["concurrency"] == c and r1["round"] == r0["round"]
                for a, b in zip(r0["answers"], r1["answers"])]
        entry["same_label"] = sum(same) / len(same)
        levels.append(entry)
    for r in rows:
        r.pop("answers")
    return {"run": args.run, "requests_per_level": args.requests, "rounds": args.rounds, "threads": args.threads,
            "max_batch_size": args.max_batch_size, "peak_rss_mb": peaks, "levels": levels, "runs": rows,
            "environment": environment()}


def environment() -> dict:
    import fastapi
    import peft
    import torch
    import transformers
    import uvicorn

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__, "date": time.strftime("%Y-%m-%d %H:%M")}


def table(result: dict) -> str:
    lines = ["| clients | server | requests/s | texts/s | p50 ms | p95 ms | p99 ms | errors | throughput vs baseline "
             "(median, min-max over rounds) | same label |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for level in result["levels"]:
        for name in ("baseline", "peftkit"):
            m = level[name]
            ratio = level["throughput_ratio"]
            extra = ((f"**{ratio['median']:.2f}x** ({ratio['min']:.2f}-{ratio['max']:.2f})",
                      f"{level['same_label']:.3f}") if name == "peftkit" else ("", ""))
            lines.append(f"| {level['concurrency']} | {name} | {m['requests_per_s']:.1f} | {m['texts_per_s']:.1f} | "
                         f"{m['p50_ms']:.1f} | {m['p95_ms']:.1f} | {m['p99_ms']:.1f} | {m['errors']} | {extra[0]} | "
                         f"{extra[1]} |")
    peaks = result["peak_rss_mb"]
    lines.append("")
    lines.append(f"Peak RSS (VmHWM): baseline {peaks['baseline']:.0f} MB, peftkit serve {peaks['peftkit']:.0f} MB. "
                 f"{result['requests_per_level']} requests per level and round, {result['rounds']} rounds, "
                 f"{result['threads']} torch thread(s) per server; medians over rounds.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a classification run folder (peftkit train output_dir)")
    parser.add_argument("--requests", type=int, default=400, help="requests per level and round (default 400)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server (default 1)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--name", default="serve")
    args = parser.parse_args()
    result = run(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = table(result)
    (RESULTS / f"{args.name}.md").write_text("# peftkit serve vs pipeline-per-request "
                                             f"({result['environment']['date']})"
                                             f"\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    main()
