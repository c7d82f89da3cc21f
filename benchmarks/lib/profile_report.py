"""The markdown tables of benchmarks/speed/profile_step.py (kept apart so the script stays about measuring)."""

from __future__ import annotations

from typing import Any

SHORT = {"base_matmul": "frozen-base matmuls", "lora_matmul": "LoRA matmuls (rank 16)",
         "head_matmul": "output head matmuls", "attention": "attention (sdpa)", "casts": "dtype casts (autocast)",
         "elementwise": "forward elementwise / norms / softmax / loss",
         "backward_other": "backward elementwise + autograd",
         "optimizer": "optimizer (AdamW, zero_grad, clipping)", "bookkeeping": "views / empty / transposes",
         "python_forward": "Python in the forward", "data": "data collation",
         "outside_ops": "outside operators (Trainer loop, profiler)"}


def category_table(runs: list[dict[str, Any]]) -> list[str]:
    head = "| category | " + " | ".join(f"{r['config']} ({r['tokens_per_step']:.0f} tok/step)" for r in runs) + " |"
    lines = [head, "|---|" + "---|" * len(runs)]
    for i, row in enumerate(runs[0]["categories"]):
        cells = []
        for run in runs:
            c = run["categories"][i]
            cell = f"{c['share']:.1%} ({c['self_ms'] / run['profiled_steps']:.0f} ms/step)"
            if c.get("gflops") is not None:
                cell += f", {c['gflops']:.0f} GFLOP/s = {c['of_peak']:.0%} of peak"
            cells.append(cell)
        lines.append(f"| {SHORT.get(row['category'], row['category'])} | " + " | ".join(cells) + " |")
    lines.append("| (the profiler's own cost, estimated; spread over the rows above) | "
                 + " | ".join(map(overhead_cell, runs)) + " |")
    lines.append("| **total = window wall time** | " + " | ".join(
        f"100% ({r['window_wall_s'] / r['profiled_steps'] * 1000:.0f} ms/step)" for r in runs) + " |")
    return lines


def overhead_cell(run: dict[str, Any]) -> str:
    """Window time minus the unprofiled time per token times the window's tokens; negative when the window's
    batches cost less per token than the unprofiled ones (other shapes, other load): then no estimate."""
    overhead = run.get("profiler_overhead_s_est")
    if overhead is None or overhead < 0:
        return "n/a (no estimate: the unprofiled steps were slower per token)" if overhead is not None else "n/a"
    return f"{overhead / run['window_wall_s']:.1%}"


def run_lines(runs: list[dict[str, Any]]) -> list[str]:
    lines = ["| config | useful tok/step | model GFLOP/token | unprofiled: useful tok/s, model GFLOP/s, share of bf16 "
             "peak | profiled: model GFLOP/s | bf16 peak in the run (GFLOP/s) | s/token profiled vs unprofiled | "
             "load at end |", "|---|" + "---|" * 7]
    for r in runs:
        plain = r.get("unprofiled_s_per_token")
        unprofiled = (f"{1 / plain:.1f}, {r['model_gflop_per_token'] / plain:.1f}, "
                      f"**{r['model_gflop_per_token'] / plain / r['bf16_peak_gflops']:.1%}**" if plain else "n/a")
        overhead = f"{r['profiled_s_per_token'] / plain:.2f}x" if plain else "n/a"
        lines.append(f"| {r['config']} | {r['tokens_per_step']:.0f} | {r['model_gflop_per_token']} | {unprofiled} | "
                     f"{r['model_gflops_profiled']} | {r['bf16_peak_gflops']:.0f} | {overhead} | {r['load_avg_end']} |")
    return lines


def top_op_lines(runs: list[dict[str, Any]], categories=("casts", "elementwise", "backward_other", "optimizer")):
    lines = []
    for r in runs:
        parts = []
        for c in r["categories"]:
            if c["category"] in categories:
                ops = ", ".join(f"{k.removeprefix('aten::')} {v / r['profiled_steps']:.0f}"
                                for k, v in list(c["top_ops"].items())[:4])
                parts.append(f"{c['category']}: {ops}")
        lines.append(f"- {r['config']} (ms per step): " + "; ".join(parts))
    return lines


def shape_lines(runs: list[dict[str, Any]]) -> list[str]:
    lines = ["| config | category | kernel | b x m x k x n | calls | ms | GFLOP/s |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        for s in r["matmul_shapes"][:8]:
            dims = "x".join(map(str, s["bmkn"])) if s["bmkn"] else "?"
            lines.append(f"| {r['config']} | {s['category']} | {s['kernel']} | {dims} | {s['calls']} | "
                         f"{s['self_ms']} | {s['gflops']} |")
    return lines


def retabulated(payload: dict[str, Any]) -> list[str]:
    if not any(r.get("tokens_rederived") for r in payload["runs"]):
        return []
    return [f"Retabulated {payload.get('retabulated')} with `python -m benchmarks.speed.profile_step --retabulate "
            "NAME`: the first version of the script took the window's batches one batch late (accelerate's loader "
            "collates one ahead), so the window's token counts (and the figures per token that follow from them) were "
            "re-derived from the replayed, seeded batch order. Check, window batches' padded positions and whether "
            "each is a row count of the profiled matmuls: " + "; ".join(map(window_check, payload["runs"]))
            + ". Times, operator figures and the unprofiled rate are the run's own.", ""]


def window_check(run: dict[str, Any]) -> str:
    warm, steps = run["warmup_steps"], run["profiled_steps"]
    positions = [p for _, p in run["per_batch_useful_positions"][warm:warm + steps]]
    rows = {s["bmkn"][1] for s in run["matmul_shapes"] if s.get("bmkn")}
    return f"{run['config']} " + ", ".join(f"{p} ({'yes' if p in rows else 'no'})" for p in positions)


def markdown(payload: dict[str, Any], categories: dict[str, str]) -> str:
    runs, env, sweep = payload["runs"], payload["environment"], payload["sweep"]
    md = ["# Where a peftkit training step's time goes (SmolLM2-135M-Instruct, LoRA r16 all-linear, SST-2)", "",
          f"Command: `{payload['command']}`", "", *retabulated(payload),
          "Each config: the real `peftkit train` path (bf16 autocast, length-grouped batches; `gen` = packed SFT) "
          "in its own process, 1 torch thread; the profiled window is whole optimizer steps after the warm-up. "
          "Shares are of the window's wall time and add up to 100%; matmul GFLOP/s come from the shapes, over "
          "the bf16 matmul peak measured in the same process (before and after training, the higher).", "",
          *category_table(runs), "", *run_lines(runs), "",
          "Matmul efficiency curve (1 thread, best of 3, in the driver process at the start): bf16 "
          + ", ".join(f"{k}: {v}" for k, v in sweep["bfloat16"]["by_shape"].items()) + " GFLOP/s; fp32 "
          + ", ".join(f"{k}: {v}" for k, v in sweep["float32"]["by_shape"].items())
          + f" GFLOP/s (load {sweep['load_avg']}).", "",
          "Largest matmul shapes by time:", "", *shape_lines(runs), "",
          "Top operators of the non-matmul categories:", "", *top_op_lines(runs), "",
          "Attention kernels: " + "; ".join(f"{r['config']}: " + ", ".join(
              f"{a['kernel'].removeprefix('aten::')} q/k {a['q_k_shapes']} {a['self_ms']} ms x{a['calls']}"
              for a in r["attention_shapes"][:2]) for r in runs), "",
          "Categories: " + "; ".join(f"**{SHORT.get(k, k)}**: {v}" for k, v in categories.items()) + ".", "",
          f"Machine: {env['cpu']}, {env['cpu_count']} cores ({', '.join(env['cpu_bf16_flags'])}), shared: one core "
          f"busy with another training run, the other shared with other engineers' jobs (load average "
          f"{env['load_avg_at_start'][0]} at start, {payload['load_avg_end']:.2f} at end): times are under load. "
          f"torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, trl {env['trl']}; "
          f"{env['date']}, {payload['wall_s']} s."]
    return "\n".join(md)
