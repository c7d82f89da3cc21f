"""Where the SFT path's training-step memory goes (issue 18), on the real `peftkit train` path.

    OMP_NUM_THREADS=1 python -m benchmarks.memory.probe_sft_memory --examples 200 --steps 4 [--arms all,learned,...]

Each arm runs ``peftkit.run.run`` on recipes/sst2/smollm2_lora_gen.yaml (SmolLM2-135M-Instruct, LoRA r16
all-linear, bfd packing into padding-free rows, bf16 autocast on this CPU) with a few recipe overrides, in its
own process, for ``--steps`` optimizer steps. Per training step it measures, with the kernel's own counters:

* the step's RSS peak above the RSS before the step (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``: the peak of this step alone, not of model loading);
* on the second step, the bytes autograd keeps for the backward (``torch.autograd.graph.saved_tensors_hooks``,
  deduplicated by storage, parameters excluded), by the module that saved them.

Not a speed benchmark (the hooks cost time); speed is bench_sft.py's. Writes benchmarks/results/NAME.json, .md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
RECIPE = REPO / "recipes" / "sst2" / "smollm2_lora_gen.yaml"
CKPT = "train.activation_checkpointing=true"
ARMS = {
    "all": ["model.lm_head_positions=all"],  # peftkit before issue 18: TRL's fused head on every position
    "learned": [],  # peftkit's default now
    "learned+ckpt2": [CKPT, "train.activation_checkpointing_kwargs={every_n_layers: 2}"],
    "learned+ckpt3": [CKPT, "train.activation_checkpointing_kwargs={every_n_layers: 3}"],
    "learned+ckpt": [CKPT],
    "all+ckpt": ["model.lm_head_positions=all", CKPT],
}


def proc_kb(field: str) -> float:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def category(name: str, module, tensor) -> str:
    """What a saved tensor is, from the innermost module running when autograd saved it."""
    if "lora_" in name:
        return "LoRA layers (dropout copies of inputs, A outputs)"
    if name.endswith("base_layer"):
        if tuple(tensor.shape) == tuple(module.weight.shape):
            return "bf16 copies of frozen weights (autocast)"
        return "frozen linear inputs (bf16 casts)"
    if name.endswith("self_attn"):
        return "attention (sdpa, rotary)"
    if name.endswith("mlp") or name.endswith("act_fn"):
        return "MLP elementwise (SiLU, product)"
    if "norm" in name:
        return "RMSNorm"
    if "embed_tokens" in name:
        return "embedding"
    if "layers." in name:
        return "decoder layer (residual adds, other)"
    return "LM head + loss (outside the decoder)"


class SavedTensorCensus:
    """Bytes saved for the backward during one forward, by category; parameters and repeated storages once."""

    def __init__(self, model):
        import torch

        self.names = {id(m): n for n, m in model.named_modules()}
        self.modules = {id(m): m for m in model.modules()}
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.stack: list[int] = []
        self.seen: set[int] = set()
        self.bytes: dict[str, int] = defaultdict(int)
        self.active = False
        self._handles = [torch.nn.modules.module.register_module_forward_pre_hook(self._enter),
                         torch.nn.modules.module.register_module_forward_hook(self._leave)]

    def _enter(self, module, args):
        self.stack.append(id(module))

    def _leave(self, module, args, output):
        if self.stack and self.stack[-1] == id(module):
            self.stack.pop()

    def pack(self, tensor):
        if self.active:
            storage = tensor.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in self.params and ptr not in self.seen:
                self.seen.add(ptr)
                top = self.stack[-1] if self.stack else None
                name = self.names.get(top, "")
                self.bytes[category(name, self.modules.get(top), tensor)] += storage.nbytes()
        return tensor

    def close(self):
        for h in self._handles:
            h.remove()


def observe(trainer, facts: dict[str, Any]) -> None:
    import torch

    census = SavedTensorCensus(trainer.model)
    compute_loss, training_step = trainer.compute_loss, trainer.training_step
    facts["steps"] = []

    def counted_loss(*args, **kwargs):
        census.active = len(facts["steps"]) == 1  # the second step: the optimizer state exists already
        with torch.autograd.graph.saved_tensors_hooks(census.pack, lambda t: t):
            loss = compute_loss(*args, **kwargs)
        census.active = False
        return loss

    def measured_step(model, inputs, *args, **kwargs):
        before = proc_kb("VmRSS")
        reset_peak()
        t0 = time.perf_counter()
        loss = training_step(model, inputs, *args, **kwargs)
        facts["steps"].append({"tokens": int(inputs["input_ids"].numel()),
                               "learned": int((inputs["labels"] != -100).sum()),
                               "rss_before_mb": round(before / 1024, 1),
                               "step_peak_above_mb": round((proc_kb("VmHWM") - before) / 1024, 1),
                               "step_peak_mb": round(proc_kb("VmHWM") / 1024, 1),
                               "step_s": round(time.perf_counter() - t0, 2)})
        if len(facts["steps"]) == 2:
            facts["saved_for_backward_mb"] = {k: round(v / 2**20, 1) for k, v in sorted(census.bytes.items())}
            census.close()
        return loss

    trainer.compute_loss, trainer.training_step = counted_loss, measured_step
    params = list(trainer.model.parameters())
    facts["weights_mb"] = round(sum(p.numel() * p.element_size() for p in params) / 2**20, 1)
    facts["trainable_mb"] = round(sum(p.numel() * p.element_size() for p in params if p.requires_grad) / 2**20, 1)


def one_arm(arm: str, examples: int, steps: int, out: Path) -> None:
    import peftkit.run as run_mod
    import peftkit.tasks.causal as causal
    from peftkit.recipe import load_recipe

    facts: dict[str, Any] = {"arm": arm, "overrides": ARMS[arm]}
    build = causal.build_trainer

    def build_observed(*args, **kwargs):
        trainer = build(*args, **kwargs)
        facts["rss_before_training_mb"] = round(proc_kb("VmRSS") / 1024, 1)
        facts["peak_rss_loading_mb"] = round(proc_kb("VmHWM") / 1024, 1)
        observe(trainer, facts)
        return trainer

    causal.build_trainer = build_observed
    with tempfile.TemporaryDirectory(prefix="peftkit-probe-") as tmp:
        overrides = [f"output_dir={tmp}/run", f"data.max_train_samples={examples}", f"train.max_steps={steps}",
                     "evaluate.enabled=false", 'train.save_strategy="no"', *ARMS[arm]]
        run_mod.run(load_recipe(RECIPE, overrides))
    out.write_text(json.dumps(facts))


def summary_row(f: dict[str, Any]) -> str:
    later = f["steps"][1:] or f["steps"]
    peak = max(s["step_peak_mb"] for s in f["steps"])
    step_s = sorted(s["step_s"] for s in later)[len(later) // 2]
    saved = f.get("saved_for_backward_mb", {})
    above = round(peak - f["rss_before_training_mb"], 1)
    return (f"| {f['arm']} | {peak} | {above} | {round(sum(saved.values()), 1)} | "
            f"{saved.get('LM head + loss (outside the decoder)', 0)} | {f['rss_before_training_mb']} | "
            f"{f['peak_rss_loading_mb']} | {step_s} | {round(sum(s['tokens'] for s in later) / len(later))} / "
            f"{round(sum(s['learned'] for s in later) / len(later))} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=200)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--arms", default="all,learned,learned+ckpt2,learned+ckpt")
    p.add_argument("--name", default="sft_memory")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        return one_arm(a.one, a.examples, a.steps, Path(a.out))
    started = time.strftime("%Y-%m-%d %H:%M")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    results, loads = [], []
    for arm in a.arms.split(","):
        loads.append(os.getloadavg()[0])
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [sys.executable, "-m", "benchmarks.memory.probe_sft_memory", "--one", arm,
                   "--examples", str(a.examples), "--steps", str(a.steps), "--out", out.name]
            proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
            if proc.returncode:
                print(proc.stdout[-3000:], proc.stderr[-3000:])
                raise SystemExit(f"arm {arm} failed")
            results.append(json.loads(Path(out.name).read_text()))
        print(summary_row(results[-1]), flush=True)
    loads.append(os.getloadavg()[0])
    md = ["# Where the SFT training step's memory goes (SmolLM2-135M, LoRA r16, packed, bf16 autocast)", "",
          f"Command: `OMP_NUM_THREADS=1 python -m benchmarks.memory.probe_sft_memory {' '.join(sys.argv[1:])}`", "",
          f"{a.examples} SST-2 sentences, {a.steps} optimizer steps per arm (batch 8 packed rows of up to 64 "
          "tokens), each arm its own process. Training peak: the highest RSS of any training step (VmHWM, reset before "
          "each step, so model loading is not in it); above: that minus the RSS once the trainer was built. Saved for "
          "backward: bytes autograd holds between forward and backward on the second step (parameters excluded; "
          "glibc keeps freed memory, so RSS does not fall back between steps).", "",
          "| arm | training peak RSS MB | above RSS before training MB | saved for backward MB | "
          "of which LM head + loss MB | RSS before training MB | peak RSS while loading MB | "
          "step s (hooked, under load) | tokens / learned per step |",
          "|---|---|---|---|---|---|---|---|---|", *[summary_row(f) for f in results], "",
          "Saved for backward, by what saved it (MB):", "",
          "| category | " + " | ".join(f["arm"] for f in results) + " |",
          "|---|" + "---|" * len(results)]
    cats = sorted({c for f in results for c in f.get("saved_for_backward_mb", {})})
    md += [f"| {c} | " + " | ".join(str(f.get("saved_for_backward_mb", {}).get(c, 0)) for f in results) + " |"
           for c in cats]
    md += ["", f"Weights {results[0]['weights_mb']} MB (of which trainable {results[0]['trainable_mb']} MB; AdamW "
           f"keeps two more fp32 copies of the trainable ones). Load average (1 min) at each arm's start and at the "
           f"end: {', '.join(f'{x:.2f}' for x in loads)} on 2 cores, one of them taken by another long training "
           f"run. Measured {started}."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{a.name}.json").write_text(json.dumps({"command": sys.argv, "loads": loads, "arms": results},
                                                       indent=1))
    (RESULTS / f"{a.name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
