"""Where a peftkit training step's time goes, by operator: the gap between the model FLOP/s and the matmul peak.

    OMP_NUM_THREADS=1 python -m benchmarks.speed.profile_step [--configs cls:16,cls:64,gen:8,gen:32] [--warmup 2]
        [--steps 2] [--after 2] [--name profile_smollm2]

Each config is RECIPE:BATCH (``cls`` = recipes/sst2/smollm2_lora_cls.yaml, ``gen`` = recipes/sst2/smollm2_lora_gen.yaml,
SmolLM2-135M-Instruct, LoRA r16 all-linear) run in its own process through the real ``peftkit.run.run`` (as
``peftkit train`` runs it, peftkit's speed defaults: bf16 autocast, length-grouped batches, packing for ``gen``)
with ``train.max_steps = warmup + steps + after`` and the per-device batch size BATCH. After ``warmup`` optimizer
steps ``torch.profiler`` (CPU, record_shapes, with_flops) records ``steps`` whole steps, data collation included;
the steps before (but the first, which pays one-off costs) and the ``after`` steps are timed without the profiler,
so the profiler's own cost is measured (time per useful token with and without it).
Operators are sorted into categories by benchmarks/lib/profile_categories.py; the table adds up to the window's wall
time. Each matmul category's GFLOP/s come from the shapes; the peak is ``mfu.matmul_peak`` measured in the same
run on the same thread count, with a sweep of the shapes these steps multiply (the matmul efficiency curve).
Writes benchmarks/results/NAME.json and NAME.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.lib.profile_categories import (
    CATEGORIES,
    CLIP_RANGE,
    DATA_RANGE,
    FORWARD_RANGE,
    breakdown,
    categorise,
    matmul_shapes,
)
from benchmarks.lib.profile_runs import config_spec, unprofiled_time, window_tokens

# m x k x n products of these steps (tokens x hidden x out), and the 2048^3 best case: the efficiency curve
SWEEP = [(t, 576, 1536) for t in (64, 256, 512, 1024, 2048)] + [(512, 576, 16), (512, 16, 576), (2048, 576, 16),
                                                                 (512, 576, 49152), (2048, 2048, 2048)]


# ---------------------------------------------------------------------------------------------------------------
# child: one profiled run
# ---------------------------------------------------------------------------------------------------------------


def instrument(trainer, window: dict[str, Any]):
    """Profiler window, token counts and named ranges on the Trainer peftkit built (observation only)."""
    import torch
    from transformers import TrainerCallback

    from benchmarks.lib.worker import CountingCollator

    class RangedCollator(CountingCollator):
        def __call__(self, examples):
            with torch.profiler.record_function(DATA_RANGE):
                return super().__call__(examples)

    collator = RangedCollator(trainer.data_collator)
    trainer.data_collator = collator
    compute_loss, clip = trainer.compute_loss, trainer.accelerator.clip_grad_norm_

    def ranged_compute_loss(*args, **kwargs):
        with torch.profiler.record_function(FORWARD_RANGE):
            return compute_loss(*args, **kwargs)

    def ranged_clip(*args, **kwargs):
        with torch.profiler.record_function(CLIP_RANGE):
            return clip(*args, **kwargs)

    trainer.compute_loss, trainer.accelerator.clip_grad_norm_ = ranged_compute_loss, ranged_clip
    warmup, steps = window["warmup"], window["steps"]

    class Window(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            window["step_ends"] = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs):
            window["step_ends"].append(time.perf_counter())
            if state.global_step == warmup:
                window["profiler"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                            record_shapes=True, with_flops=True)
                window["profiler"].start()
                window["t0"] = time.perf_counter()
            elif state.global_step == warmup + steps:
                window["profiler"].stop()
                window["t1"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            window["per_batch"], window["squares"] = list(collator.per_batch), collator.squares
            window["model"] = trainer.model

    trainer.add_callback(Window())


def records_of(prof) -> list[dict[str, Any]]:
    """Plain records (name, shapes, self time, enclosing ranges) of the profiler's events."""
    records = []
    for event in prof.events():
        ancestors, parent = [], event.cpu_parent
        while parent is not None:
            ancestors.append(parent.name)
            parent = parent.cpu_parent
        records.append({"name": event.name, "shapes": event.input_shapes, "self_us": event.self_cpu_time_total,
                        "ancestors": tuple(ancestors), "flops": event.flops or 0, "thread": event.thread})
    return records


def profile_child(spec: dict[str, Any]) -> dict[str, Any]:
    import peftkit.run as run_mod
    from benchmarks.lib.mfu import matmul_peak
    from benchmarks.lib.worker import peftkit_recipe
    from peftkit.tasks import task_for

    recipe = peftkit_recipe(spec)
    module = task_for(recipe.task)
    window: dict[str, Any] = {"warmup": spec["warmup"], "steps": spec["steps"]}
    build = module.build_trainer

    def build_instrumented(*args, **kwargs):
        trainer = build(*args, **kwargs)
        instrument(trainer, window)
        return trainer

    module.build_trainer = build_instrumented
    peak_before = matmul_peak(1, repeats=3)
    run_mod.run(recipe)
    peak_after = matmul_peak(1, repeats=3)
    peak = max(peak_before["bfloat16"]["gflops"], peak_after["bfloat16"]["gflops"])
    return summarise_window(spec, recipe, window, peak, [peak_before, peak_after])


def summarise_window(spec, recipe, window, peak: float, peaks: list) -> dict[str, Any]:
    from benchmarks.lib.mfu import flops_per_token, model_facts

    records = records_of(window["profiler"])
    model = window["model"]
    config = model.get_base_model().config
    labels = len(recipe.data.label_names or []) if recipe.task == "classification" else None
    keys = dict(rank=recipe.adapter.r, vocab=config.vocab_size, num_labels=labels)
    wall_us = (window["t1"] - window["t0"]) * 1e6
    rows = breakdown(categorise(records, **keys), wall_us, peak)
    warm, steps = window["warmup"], window["steps"]
    batches = window["per_batch"]
    plain_s, plain_tokens = unprofiled_time(window["step_ends"], batches, warm, steps)
    facts = model_facts(model, lm_head_every_token=recipe.task != "classification", recompute=False)
    context = window["squares"] / sum(u for u, _ in batches)
    per_token = flops_per_token(facts["config"], context=context, trainable_params=facts["trainable_params"],
                                lm_head_every_token=facts["lm_head_every_token"])
    wall_s = wall_us / 1e6
    plain_rate = plain_s / plain_tokens if plain_tokens else None
    return {
        "config": spec["name"], "recipe": spec["recipe"], "batch_size": spec["batch"], "task": recipe.task,
        "warmup_steps": warm, "profiled_steps": steps, "window_wall_s": round(wall_s, 2),
        "unprofiled_s_per_token": round(plain_rate, 5) if plain_rate else None,
        "unprofiled_steps_timed": len(window["step_ends"]) - 2 - steps,
        "context_tokens": round(context, 1), "model_gflop_per_token": round(per_token / 1e9, 4),
        "bf16_peak_gflops": peak, "peaks": peaks, "load_avg_end": round(os.getloadavg()[0], 2),
        "profiler_matmul_flops": sum(r["flops"] for r in records if r["name"] in ("aten::mm", "aten::addmm",
                                                                                  "aten::bmm", "aten::baddbmm")),
        "threads_seen": sorted({r["thread"] for r in records}),
        "per_batch_useful_positions": batches, "step_ends": window["step_ends"],
        "categories": rows, "matmul_shapes": matmul_shapes(records, **keys),
        "attention_shapes": attention_shapes(records), **window_tokens(batches, warm, steps, wall_s, plain_rate,
                                                                       per_token),
    }


def attention_shapes(records) -> list[dict[str, Any]]:
    groups: dict[tuple, dict[str, Any]] = {}
    for r in records:
        if r["name"].startswith("aten::_scaled_dot_product") and r["self_us"]:
            key = (r["name"], json.dumps(r["shapes"][:2]))
            g = groups.setdefault(key, {"kernel": r["name"], "q_k_shapes": r["shapes"][:2], "calls": 0, "self_ms": 0.0})
            g["calls"] += 1
            g["self_ms"] = round(g["self_ms"] + r["self_us"] / 1000, 1)
    return sorted(groups.values(), key=lambda g: -g["self_ms"])[:4]


# ---------------------------------------------------------------------------------------------------------------
# driver: one child per config, the peak sweep, the tables
# ---------------------------------------------------------------------------------------------------------------


def run_child(spec: dict[str, Any], log_dir: Path, mode: str = "--child") -> dict[str, Any]:
    """One config in a fresh process (1 torch thread); ``--replay`` collates its first batches instead."""
    from benchmarks.lib.common import REPO

    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="peftkit-profile-") as tmp:
        spec = dict(spec, workdir=tmp)
        spec_file, out_file = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_file.write_text(json.dumps(spec))
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                   HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
        log = log_dir / f"profile_{spec['name'].replace(':', '_')}{mode.replace('--', '_')}.log"
        with log.open("w") as handle:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.speed.profile_step", mode, str(spec_file),
                                   str(out_file)], cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                  timeout=1800)
        if proc.returncode != 0 or not out_file.exists():
            raise RuntimeError(f"{spec['name']} failed (exit {proc.returncode}); see {log}")
        return json.loads(out_file.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="cls:16,cls:64,gen:8,gen:32")
    p.add_argument("--warmup", type=int, default=2, help="optimizer steps before the profiled window (>= 2)")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps profiled")
    p.add_argument("--after", type=int, default=2, help="unprofiled steps after the window (timed, like the warm-up "
                   "steps after the first: the profiler's cost is the difference per token)")
    p.add_argument("--name", default="profile_smollm2")
    p.add_argument("--retabulate", metavar="NAME", help="re-derive the window tokens of results/NAME.json "
                   "(collates the configs' first batches, trains and times nothing) and rewrite its tables")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--replay", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child or a.replay:
        spec_file, out_file = a.child or a.replay
        if a.replay:
            from benchmarks.lib.profile_retabulate import replay_batches
        out = (profile_child if a.child else replay_batches)(json.loads(Path(spec_file).read_text()))
        Path(out_file).write_text(json.dumps(out, default=str))
        return
    if a.retabulate:
        from benchmarks.lib.profile_retabulate import retabulate

        retabulate(a.retabulate, run_child)
        return
    from benchmarks.lib.common import RESULTS, command_line, environment, write_results
    from benchmarks.lib.mfu import matmul_peak
    from benchmarks.lib.profile_report import markdown

    started = time.time()
    env = environment(1)
    sweep = matmul_peak(1, shapes=SWEEP, repeats=3)
    runs = []
    for name in a.configs.split(","):
        print(f"{time.strftime('%H:%M:%S')} {name} ... (load {os.getloadavg()[0]:.2f})", flush=True)
        runs.append(run_child(config_spec(name, a.warmup, a.steps, a.after), RESULTS / "logs"))
    payload = {"benchmark": "profile_step", "command": command_line(), "environment": env, "sweep": sweep,
               "runs": runs, "wall_s": round(time.time() - started), "load_avg_end": os.getloadavg()[0]}
    write_results(a.name, payload, markdown(payload, CATEGORIES))


if __name__ == "__main__":
    main()
