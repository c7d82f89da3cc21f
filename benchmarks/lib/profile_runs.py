"""The pieces of a step profile that the profiling script and its re-tabulation share: which recipe a config
trains, the spec of one profiled child run, and the window's tokens. Pure functions (no torch, no subprocess)."""

from __future__ import annotations

from typing import Any

RECIPES = {"cls": "recipes/sst2/smollm2_lora_cls.yaml", "gen": "recipes/sst2/smollm2_lora_gen.yaml"}


def config_spec(name: str, warmup: int, steps: int, after: int) -> dict[str, Any]:
    kind, batch = name.split(":")
    return {"name": name, "recipe": RECIPES[kind], "batch": int(batch), "warmup": warmup, "steps": steps,
            "overrides": [f"train.max_steps={warmup + steps + after}", f"train.per_device_train_batch_size={batch}",
                          "train.logging_steps=1000"]}


def window_tokens(batches: list, warm: int, steps: int, wall_s: float, plain_rate: float | None,
                  per_token: float) -> dict[str, Any]:
    """The profiled window's tokens and what follows from them. Step k trains batch k-1, so the window (steps
    warm+1 .. warm+steps) trains batches[warm:warm+steps] (not the collator's count at the window's start:
    accelerate's loader collates one batch ahead)."""
    profiled = batches[warm:warm + steps]
    useful = sum(u for u, _ in profiled)
    # the profiler's own cost: the window's time minus what its tokens took per token in the unprofiled steps
    overhead = wall_s - plain_rate * useful if plain_rate else None
    return {"useful_tokens": useful, "padded_positions": sum(p for _, p in profiled),
            "tokens_per_step": round(useful / steps, 1), "useful_tokens_per_s_profiled": round(useful / wall_s, 2),
            "profiled_s_per_token": round(wall_s / useful, 5),
            "model_gflops_profiled": round(per_token * useful / wall_s / 1e9, 2),
            "profiler_overhead_s_est": round(overhead, 2) if overhead is not None else None}


def unprofiled_time(step_ends: list[float], batches: list, warm: int, steps: int) -> tuple[float, int]:
    """Seconds and useful tokens of the steps run without the profiler, the first (one-off costs) left out.

    Step k (1-based) lasts from step end k-1 to step end k and trains batch k-1 (one batch per optimizer step)."""
    plain = [k for k in range(2, len(step_ends)) if not warm < k <= warm + steps]
    return (sum(step_ends[k] - step_ends[k - 1] for k in plain),
            sum(batches[k - 1][0] for k in plain if k - 1 < len(batches)))
