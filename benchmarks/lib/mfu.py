"""Model-FLOPs utilisation on a CPU: the machine's matmul peak measured in the same run, and the FLOPs a
training step needs per useful token. The formula is written out in benchmarks/README.md ("MFU").

Why measure the peak in the run: machines of this project differ (AMX or not, avx512_bf16 or not) and the CPU
is shared, so a peak from elsewhere says nothing about the machine and the load the run had.
"""

from __future__ import annotations

import time
from typing import Any

# (m, k, n): a large square product (the best case) and the shape of a SmolLM2 MLP projection on a batch of
# 256 tokens (576 -> 1536), closer to what training really multiplies
PEAK_SHAPES = ((2048, 2048, 2048), (256, 576, 1536))
NON_GATED_MLP = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "gpt2", "mpnet"}


def matmul_peak(threads: int, shapes=PEAK_SHAPES, repeats: int = 5, min_seconds: float = 0.05) -> dict[str, Any]:
    """GFLOP/s of torch.matmul in bf16 and fp32 on ``threads`` threads: for each shape the best of ``repeats``
    timings (each timing loops the product until it lasts ``min_seconds``), and per dtype the best shape.

    Best-of, not mean: on a shared CPU the best timing is the one least disturbed by the other jobs, the closest
    estimate of what the hardware can do; the load average is recorded beside it.
    """
    import os

    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result: dict[str, Any] = {"threads": threads, "load_avg": round(os.getloadavg()[0], 2)}
        for dtype in (torch.bfloat16, torch.float32):
            by_shape = {}
            for m, k, n in shapes:
                a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
                torch.matmul(a, b)  # warm-up: first-call allocation and kernel selection
                best = min(_timed(torch.matmul, a, b, min_seconds) for _ in range(repeats))
                by_shape[f"{m}x{k}x{n}"] = round(2 * m * k * n / best / 1e9, 1)
            result[str(dtype).removeprefix("torch.")] = {"gflops": max(by_shape.values()), "by_shape": by_shape}
        return result
    finally:
        torch.set_num_threads(previous)


def _timed(fn, a, b, min_seconds: float) -> float:
    """Seconds per call, looping until the loop lasts min_seconds (one tiny product is below timer noise)."""
    calls, started = 0, time.perf_counter()
    while True:
        fn(a, b)
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return elapsed / calls


def best_peak(*peaks: dict[str, Any]) -> dict[str, float]:
    """The higher of several peak measurements (start and end of a benchmark), per dtype."""
    return {dtype: max(p[dtype]["gflops"] for p in peaks) for dtype in ("bfloat16", "float32")}


def body_matmul_params(config: dict[str, Any]) -> int:
    """Weights every token is multiplied by in the transformer body: attention q, k, v, o and the MLP, per
    layer, times the layers. Embedding lookups do no multiply; the output head is counted apart."""
    d, layers = config["hidden_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or d // heads
    kv_heads = config.get("num_key_value_heads") or heads
    attention = 2 * d * heads * head_dim + 2 * d * kv_heads * head_dim  # q and o; k and v (grouped-query)
    mlp = (2 if config.get("model_type") in NON_GATED_MLP else 3) * d * config["intermediate_size"]
    return layers * (attention + mlp)


def flops_per_token(config: dict[str, Any], *, context: float, trainable_params: int = 0, training: bool = True,
                    lm_head_every_token: bool = False, recompute: bool = False) -> float:
    """Model FLOPs per useful token (see benchmarks/README.md, "MFU"):

    forward   F = 2 * body matmul params + 2 * hidden * vocab (only if the LM head runs on every token)
                  + 4 * layers * context * heads * head_dim (scores and weighted sum of attention)
    training    F (forward) + F (backward: gradients of the activations through the frozen base)
                + 6 * trainable params (the adapters' own forward, input gradients and weight gradients)
                + F again when activations are recomputed (gradient checkpointing)

    ``context`` is the mean length of the sequence a token attends over (sum of n^2 / sum of n over examples).
    """
    d, layers = config["hidden_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or d // heads
    forward = 2 * body_matmul_params(config) + 4 * layers * context * heads * head_dim
    if lm_head_every_token:
        forward += 2 * d * config["vocab_size"]
    if not training:
        return forward + 2 * trainable_params
    return (3 if recompute else 2) * forward + 6 * trainable_params


MODEL_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "intermediate_size", "vocab_size")


def model_facts(model, *, lm_head_every_token: bool, recompute: bool) -> dict[str, Any]:
    """What flops_per_token needs, recorded by the benchmark worker from the model it trained."""
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    return {"config": {k: getattr(config, k, None) for k in MODEL_KEYS},
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "lm_head_every_token": lm_head_every_token, "recompute": recompute}


def mfu(result: dict[str, Any], peak: dict[str, float], tokens_per_s_key: str = "useful_tokens_per_s") -> dict:
    """Model GFLOP/s of one benchmark run and their share of the measured bf16 and fp32 matmul peaks."""
    facts = result.get("model_facts")
    if not facts or not result.get(tokens_per_s_key) or not result.get("context_tokens"):
        return {}
    # MFU counts the model's FLOPs, not the work done: a checkpointed run's recomputed forward is not counted
    # (that would be hardware-FLOPs utilisation), so checkpointing shows as the cost it is
    per_token = flops_per_token(facts["config"], context=result["context_tokens"],
                                trainable_params=facts["trainable_params"],
                                lm_head_every_token=facts["lm_head_every_token"], recompute=False)
    gflops = per_token * result[tokens_per_s_key] / 1e9
    return {"gflop_per_token": round(per_token / 1e9, 4), "model_gflops": round(gflops, 2),
            "of_bf16_peak": round(gflops / peak["bfloat16"], 4), "of_fp32_peak": round(gflops / peak["float32"], 4)}


def fmt_mfu(figures: dict[str, Any]) -> str:
    if not figures:
        return "n/a"
    return (f"{figures['model_gflops']:.1f} ({figures['of_bf16_peak']:.1%} of bf16 / "
            f"{figures['of_fp32_peak']:.1%} of fp32 peak)")


def median_mfu(results: list[dict], peak: dict[str, float], key: str = "useful_tokens_per_s") -> dict:
    """mfu() of the run with the median model GFLOP/s among repeated runs of one arm."""
    figures = sorted((f for f in (mfu(r, peak, key) for r in results) if f), key=lambda f: f["model_gflops"])
    return figures[len(figures) // 2] if figures else {}


def peak_line(peaks: list[dict[str, Any]]) -> str:
    """One sentence for a results table: the peaks measured at the start and end of the run."""
    parts = [f"bf16 {p['bfloat16']['gflops']:.0f} / fp32 {p['float32']['gflops']:.0f} GFLOP/s (load {p['load_avg']})"
             for p in peaks]
    return (f"Matmul peak on {peaks[0]['threads']} thread(s), measured in this run (best of 5, shapes "
            f"{', '.join(peaks[0]['bfloat16']['by_shape'])}): " + "; ".join(parts)
            + ". MFU = model GFLOP/s (benchmarks/README.md, \"MFU\") over the higher of these peaks.")
