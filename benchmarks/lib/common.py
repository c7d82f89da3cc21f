"""Shared machinery for the benchmarks: one subprocess per measured run, interleaved A/B order, ratio statistics,
and JSON + markdown output in benchmarks/results/.

Why one subprocess per run: peak RSS (``ru_maxrss``) is a per-process high-water mark, so each configuration
needs its own process to get its own peak; it also gives every run the same cold start.

Why ratios: the CPU this was built on is shared; absolute speed moved by 2-6x with the load of other jobs.
Every speed figure is therefore the ratio of a candidate run to a baseline run measured right next to it
(A B A B ...), and the tables give the median ratio with the min-max spread over the pairs.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.lib.mfu import best_peak, fmt_mfu, matmul_peak, median_mfu, mfu, peak_line  # noqa: F401 (the benchmarks' MFU helpers)

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
# The real data sets lie beside a development clone; PEFTKIT_SHARED_DATA points elsewhere (as in the tests).
SHARED_DATA = Path(os.environ.get("PEFTKIT_SHARED_DATA") or REPO.parent / "shared" / "data")
SST2_TRAIN = SHARED_DATA / "sst2" / "train.tsv"
SST2_DEV = SHARED_DATA / "sst2" / "dev.tsv"
AGNEWS_TRAIN = SHARED_DATA / "agnews" / "train_subset10k.tsv"
AGNEWS_TEST = SHARED_DATA / "agnews" / "test.tsv"
# The AG News recipes name the hub dataset (what a user has); the benchmarks measured on the shared local files (a
# 10k sample of the official train set, the official test set) and keep reading them, offline.
LOCAL_COPIES = {"fancyzhx/ag_news": ["data.dataset=null", f"data.train_file={AGNEWS_TRAIN}",
                                     f"data.eval_file={AGNEWS_TEST}", "data.has_header=false",
                                     "data.column_names=[text, label]"]}


def local_data(recipe: str | Path) -> list[str]:
    """Overrides that read a hub-data recipe's dataset from its shared local copy (none for builtin data); give
    them before the benchmark's own overrides, which may replace the training file again."""
    import yaml

    data = yaml.safe_load((REPO / recipe).read_text(encoding="utf-8")).get("data") or {}
    return list(LOCAL_COPIES.get(data.get("dataset"), []))


def run_worker(spec: dict[str, Any], *, threads: int, log_dir: Path, timeout: float = 1800) -> dict[str, Any]:
    """Run one configuration in a fresh ``python -m benchmarks.lib.worker`` process and return its result dict.

    ``threads`` sets OMP/MKL threads for the child (the same for every arm of a benchmark).
    The child's stdout/stderr go to a log file named after the arm; a failure raises with the log's tail.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="peftkit-bench-") as tmp:
        spec = dict(spec, workdir=tmp)
        spec_file = Path(tmp) / "spec.json"
        out_file = Path(tmp) / "result.json"
        spec_file.write_text(json.dumps(spec))
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                   HF_HUB_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        env.update(spec.get("env", {}))  # an arm's own process settings, read at process start (glibc's malloc)
        log = log_dir / f"{spec['name']}.log"
        started = time.time()
        with log.open("a", encoding="utf-8") as handle:
            handle.write(f"\n===== {time.strftime('%H:%M:%S')} {spec['name']} =====\n")
            handle.flush()
            proc = subprocess.run([*module_command("benchmarks.lib.worker"), str(spec_file), str(out_file)],
                                  cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout)
        if proc.returncode != 0 or not out_file.exists():
            tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-25:])
            raise RuntimeError(f"{spec['name']} failed (exit {proc.returncode}); log {log}:\n{tail}")
        result = json.loads(out_file.read_text())
    result["process_wall_s"] = round(time.time() - started, 1)
    result["load_avg_after"] = round(os.getloadavg()[0], 2)
    return result


def interleaved(arms: list[dict[str, Any]], repeats: int, *, threads: int, log_dir: Path,
                say=None) -> dict[str, list[dict[str, Any]]]:
    """Run every arm ``repeats`` times in rotating order A B C, B C A, ... so no arm always goes first.

    Returns arm name -> list of results, in the order measured; each result records its round.
    """
    say = say or (lambda message: print(message, flush=True))
    results: dict[str, list[dict[str, Any]]] = {arm["name"]: [] for arm in arms}
    for rnd in range(repeats):
        order = arms[rnd % len(arms):] + arms[: rnd % len(arms)] if len(arms) > 1 else arms
        for arm in order:
            say(f"[round {rnd + 1}/{repeats}] {arm['name']} ...")
            res = run_worker(arm, threads=threads, log_dir=log_dir)
            res["round"] = rnd
            results[arm["name"]].append(res)
            say(f"    train {res['train_s']:.1f} s, useful {res['useful_tokens_per_s']:.1f} tok/s, "
                f"padding {res['padding_fraction']:.1%}, peak RSS {res['peak_rss_train_mb']:.0f} MB, "
                f"load {res['load_avg_after']}")
    return results


def ratio_stats(baseline: list[dict], candidate: list[dict], key: str, *, higher_is_better: bool = True) -> dict:
    """Per-round ratios candidate/baseline for ``key`` (rounds paired by index): median, min, max, n."""
    pairs = [(b[key], c[key]) for b, c in zip(baseline, candidate) if b.get(key) and c.get(key) is not None]
    ratios = [c / b for b, c in pairs] if higher_is_better else [b / c for b, c in pairs]
    if not ratios:
        return {"median": None, "min": None, "max": None, "n": 0, "ratios": []}
    return {"median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3),
            "max": round(max(ratios), 3), "n": len(ratios), "ratios": [round(r, 3) for r in ratios]}


def fmt_ratio(stats: dict) -> str:
    if stats.get("median") is None:
        return "n/a"
    if stats["n"] == 1:
        return f"{stats['median']:.2f}x (n=1)"
    return f"**{stats['median']:.2f}x** ({stats['min']:.2f}-{stats['max']:.2f}, n={stats['n']})"


def median_of(results: list[dict], key: str, digits: int = 1):
    values = [r[key] for r in results if r.get(key) is not None]
    return round(statistics.median(values), digits) if values else None


def environment(threads: int) -> dict[str, Any]:
    """What the numbers were measured on, recorded beside every table."""
    import peft
    import torch
    import transformers
    import trl

    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_bf16_flags": sorted(flags & {"avx512_bf16", "amx_bf16", "avx512f", "amx_tile"}),
        "torch_threads_per_run": threads,
        "gpu": "none (no GPU on this machine; GPU figures not measured)",
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "trl": trl.__version__, "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def module_command(module: str) -> list[str]:
    """The command that runs a benchmark module in a fresh interpreter (from the repository root: cwd=REPO)."""
    return [sys.executable, "-m", module]


def module_name(path: str | Path) -> str:
    """benchmarks/speed/bench_x.py -> benchmarks.speed.bench_x (how every benchmark is started)."""
    relative = Path(path).resolve().relative_to(REPO).with_suffix("")
    return ".".join(relative.parts)


def command_line() -> str:
    """The command that reproduces this run, as the README writes it: ``python -m benchmarks.<group>.<script> ...``."""
    return "python -m " + " ".join(shlex.quote(a) for a in [module_name(sys.argv[0]), *sys.argv[1:]])


def write_results(name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write results/NAME.json and results/NAME.md, and print the table and where it went."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{name}.json"
    md_path = RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    print(markdown)
    print(f"\nwritten: {json_path} {md_path}")
    return json_path, md_path


def env_lines(env: dict[str, Any], started: float) -> str:
    return (f"Machine: {env['cpu']}, {env['cpu_count']} cores ({', '.join(env['cpu_bf16_flags']) or 'no bf16 flags'}), "
            f"shared with other jobs (load average {env['load_avg_at_start'][0]} at start); "
            f"{env['torch_threads_per_run']} torch thread(s) per run, the same for every arm. GPU: {env['gpu']}.\n"
            f"torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, trl {env['trl']}. "
            f"Measured {env['date']}, benchmark wall time {time.time() - started:.0f} s.")


def arg_threads_help() -> str:
    return ("torch threads per run (default 1). On a CPU shared with other jobs, 2 OpenMP threads spin-waiting for "
            "each other were 6-8x slower than 1 thread (measured); use the number of idle cores")


MODELS = {
    "smollm2": "recipes/sst2/smollm2_lora_cls.yaml",
    "minilm": "recipes/sst2/minilm_lora_cls.yaml",
}
# Every speed default off: what peftkit did before benchmarks/ existed (and what the levers are measured against).
ALL_LEVERS_OFF = ["train.train_sampling_strategy=random", "train.bf16=false"]


def cls_arm(name: str, kind: str, recipe: str, *, examples: int, stride: int | None, evaluate: bool,
            overrides: list[str] = (), eval_examples: int | None = None, **extra) -> dict[str, Any]:
    """A classification arm: same recipe, same data subset, same epoch; ``overrides`` change one thing."""
    data = [f"data.max_train_samples={examples}"]
    if eval_examples:
        data.append(f"data.max_eval_samples={eval_examples}")
    # Offset stride//2: a length-grouped epoch starts with its longest batch (transformers puts it first so memory
    # errors show early); offset 0 would always measure that untypical batch.
    return {"name": name, "kind": kind, "recipe": recipe, "overrides": [*data, *overrides],
            "stride": stride, "stride_offset": (stride or 0) // 2, "evaluate": evaluate, **extra}
