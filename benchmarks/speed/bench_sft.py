"""SFT / generative path: plain trl.SFTTrainer (packing off, its default) against packing + padding-free
(what peftkit's SFT path defaults to), and peftkit's own SFT path and LLaMA-Factory where available.

    python -m benchmarks.speed.bench_sft [--quick] [--examples 256] [--arms
    trl-packing-off,trl-packing-on,peftkit-sft,llamafactory]

Task: SST-2 as "Review: <sentence>\\nSentiment:" -> " negative" | " positive" (loss on the label word only, as
TRL does for prompt/completion data and LLaMA-Factory does by default), SmolLM2-135M-Instruct + LoRA r16 all-linear,
lr 3e-4, batch 8, max_length 64, one full epoch over the same examples for every arm. Packing changes the number
of rows and so the number of optimizer steps: compare time per epoch and useful tokens/s, not steps.

Arms (each in its own process):
  trl-packing-off  SFTTrainer defaults (padded batches, random order)                 -- the baseline
  trl-packing-on   SFTTrainer(packing=True): BFD packing, padding-free rows
  peftkit-sft      peftkit.run.run on recipes/sst2/smollm2_lora_gen.yaml with peftkit's speed defaults
                   (packing + padding-free rows, bf16 autocast on CPUs with native bf16)
  peftkit-sft-before  peftkit before issue 18 (the same as peftkit-sft-all)
  peftkit-sft-mmap the defaults with MALLOC_MMAP_THRESHOLD_=262144 (glibc; less memory, more time)
  peftkit-sft-all  the same with model.lm_head_positions=all: TRL's fused LM head on every position (peftkit
                   before issue 18; the LM head now projects only positions whose next token is learned)
  peftkit-sft-ckpt the same with train.gradient_checkpointing=true (TRL's default; less memory, more time)
  peftkit-sft-all-ckpt  lm_head_positions=all and checkpointing
  peftkit-sft-ckpt2  checkpointing of every 2nd decoder layer only (activation_checkpointing_kwargs.every_n_layers)
  peftkit-sft-fp32 the same with train.bf16=false: the bf16 lever off
  peftkit-sft-padfree  padding-free batches without packing: the baseline's examples per step and number of
                   optimizer steps, joined into one row (no padding computed)
  llamafactory     llamafactory-cli train in the isolated venv made by benchmarks/speed/llamafactory_setup.sh
                   (skipped with a note if /tmp/lf-venv does not exist); its own defaults, same hyperparameters

``--eval-examples N`` adds label-word accuracy on N SST-2 dev sentences for the TRL arms (off by default: slow).
Writes benchmarks/results/sft.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.lib.common import (
    REPO,
    RESULTS,
    SST2_DEV,
    SST2_TRAIN,
    arg_threads_help,
    best_peak,
    command_line,
    env_lines,
    environment,
    fmt_mfu,
    fmt_ratio,
    matmul_peak,
    median_mfu,
    median_of,
    peak_line,
    ratio_stats,
    run_worker,
    write_results,
)

MODEL = "packaged:smollm2-135m-instruct"
GEN_RECIPE = "recipes/sst2/smollm2_lora_gen.yaml"
LF_VENV = Path(os.environ.get("PEFTKIT_LF_VENV", "/tmp/lf-venv"))
HYPER = {"learning_rate": 3e-4, "batch_size": 8, "max_length": 64}
ARMS = ("trl-packing-off", "trl-packing-on", "peftkit-sft", "peftkit-sft-before", "peftkit-sft-all", "peftkit-sft-mmap",
        "peftkit-sft-ckpt", "peftkit-sft-all-ckpt", "peftkit-sft-ckpt2", "peftkit-sft-fp32", "peftkit-sft-padfree",
        "llamafactory")
# peftkit arms: recipe overrides that turn one lever from peftkit's default
PEFTKIT_ARMS = {"peftkit-sft": [], "peftkit-sft-fp32": ["train.bf16=false"],
                "peftkit-sft-ckpt": ["train.gradient_checkpointing=true"],
                "peftkit-sft-all": ["model.lm_head_positions=all"],
                "peftkit-sft-before": ["model.lm_head_positions=all"],
                "peftkit-sft-all-ckpt": ["model.lm_head_positions=all", "train.gradient_checkpointing=true"],
                "peftkit-sft-ckpt2": ["train.gradient_checkpointing=true",
                                      "train.activation_checkpointing_kwargs={every_n_layers: 2}"],
                "peftkit-sft-mmap": [],
                "peftkit-sft-padfree": ["train.packing=false", "train.padding_free=true"]}
# peftkit arms' process settings: glibc's mmap threshold fixed at 256 KiB (freed activations go back to the system;
# benchmarks/README.md, "SFT memory")
PEFTKIT_ENV = {"peftkit-sft-mmap": {"MALLOC_MMAP_THRESHOLD_": "262144"}}


def trl_spec(name: str, packing: bool, examples: int, eval_examples: int) -> dict[str, Any]:
    return {"name": f"sft:{name}", "kind": "trl_sft", "model": MODEL, "packing": packing,
            "train_file": os.path.relpath(SST2_TRAIN, REPO), "eval_file": os.path.relpath(SST2_DEV, REPO),
            "max_train_samples": examples, "max_eval_samples": eval_examples or 1,
            "evaluate": bool(eval_examples), **HYPER}


def run_llamafactory(examples: int, threads: int, log_dir: Path) -> dict[str, Any]:
    """LLaMA-Factory on the same examples: its CLI in its own venv; figures from its own trainer state."""
    from benchmarks.lib.worker import sft_examples  # the same examples as the TRL arms

    train_rows, _ = sft_examples({"train_file": os.path.relpath(SST2_TRAIN, REPO),
                                  "eval_file": os.path.relpath(SST2_DEV, REPO), "max_train_samples": examples})
    from peftkit.model.packaged import resolve_model_path

    with tempfile.TemporaryDirectory(prefix="peftkit-bench-lf-") as tmp:
        tmp = Path(tmp)
        (tmp / "data").mkdir()
        (tmp / "data" / "sst2_sft.json").write_text(json.dumps(
            [{"instruction": r["prompt"], "input": "", "output": r["completion"]} for r in train_rows]))
        (tmp / "data" / "dataset_info.json").write_text(json.dumps({"sst2_sft": {"file_name": "sst2_sft.json"}}))
        config = {
            "model_name_or_path": resolve_model_path(MODEL), "stage": "sft", "do_train": True,
            "finetuning_type": "lora", "lora_target": "all", "lora_rank": 16, "lora_alpha": 32, "lora_dropout": 0.05,
            "dataset": "sst2_sft", "dataset_dir": str(tmp / "data"), "template": "empty",
            "cutoff_len": HYPER["max_length"], "overwrite_cache": True, "preprocessing_num_workers": 1,
            "output_dir": str(tmp / "out"), "logging_steps": 10, "save_strategy": "no", "report_to": "none",
            "per_device_train_batch_size": HYPER["batch_size"], "learning_rate": HYPER["learning_rate"],
            "num_train_epochs": 1, "seed": 42, "include_num_input_tokens_seen": "non_padding",
        }
        # YAML: llamafactory-cli 0.9.5 cannot read a .json config (it passes a Path to json.load)
        (tmp / "config.yaml").write_text(yaml.safe_dump(config))
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
                   HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", DISABLE_VERSION_CHECK="1")
        log = log_dir / "sft:llamafactory.log"
        with log.open("a") as handle:
            handle.write(f"\n===== {time.strftime('%H:%M:%S')} llamafactory =====\n")
            handle.flush()
            proc = subprocess.Popen([str(LF_VENV / "bin" / "llamafactory-cli"), "train", str(tmp / "config.yaml")],
                                    env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=tmp)
            _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"llamafactory failed; log {log}:\n{tail}")
        results = json.loads((tmp / "out" / "all_results.json").read_text())
        state = json.loads((tmp / "out" / "trainer_state.json").read_text())
    seen = max((e.get("num_input_tokens_seen", 0) for e in state.get("log_history", [])), default=0)
    train_s = results["train_runtime"]
    return {"name": "sft:llamafactory", "kind": "llamafactory", "train_s": round(train_s, 2),
            "steps": state.get("global_step"), "steps_per_s": round(state.get("global_step", 0) / train_s, 4),
            "useful_tokens": seen, "useful_tokens_per_s": round(seen / train_s, 2) if seen else None,
            "padding_fraction": None, "train_loss": results.get("train_loss"),
            "peak_rss_train_mb": round(usage.ru_maxrss / 1024, 1), "note": "peak RSS of the whole run (wait4)"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="64 examples (development)")
    p.add_argument("--examples", type=int, default=256)
    p.add_argument("--eval-examples", type=int, default=0)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--name", default="sft", help="results file name (benchmarks/results/NAME.json and .md)")
    p.add_argument("--threads", type=int, default=1, help=arg_threads_help())
    a = p.parse_args()
    started = time.time()
    examples = 64 if a.quick else a.examples
    wanted = [x for x in a.arms.split(",") if x]
    skipped: dict[str, str] = {}
    specs: list[tuple[str, Any]] = []
    for name in wanted:
        if name == "trl-packing-off":
            specs.append((name, trl_spec(name, False, examples, a.eval_examples)))
        elif name == "trl-packing-on":
            specs.append((name, trl_spec(name, True, examples, a.eval_examples)))
        elif name in PEFTKIT_ARMS:
            overrides = [f"data.max_train_samples={examples}", *PEFTKIT_ARMS[name]]
            if a.eval_examples:
                overrides.append(f"data.max_eval_samples={a.eval_examples}")
            specs.append((name, {"name": f"sft:{name}", "kind": "peftkit_sft", "recipe": GEN_RECIPE,
                                 "overrides": overrides, "evaluate": bool(a.eval_examples),
                                 "env": PEFTKIT_ENV.get(name, {})}))
        elif name == "llamafactory":
            if not (LF_VENV / "bin" / "llamafactory-cli").exists():
                skipped[name] = f"no LLaMA-Factory venv at {LF_VENV}: run benchmarks/speed/llamafactory_setup.sh first"
                continue
            specs.append((name, "llamafactory"))
        else:
            raise SystemExit(f"unknown arm {name!r}; choose from {', '.join(ARMS)}")
    env = environment(a.threads)
    peaks = [matmul_peak(a.threads)]  # the machine's peak, measured before and after the arms (MFU)
    results: dict[str, list[dict]] = {name: [] for name, _ in specs}
    for rnd in range(a.repeats):
        order = specs[rnd % len(specs):] + specs[:rnd % len(specs)]
        for name, spec in order:
            print(f"[round {rnd + 1}/{a.repeats}] {name} ...", flush=True)
            try:
                if spec == "llamafactory":
                    res = run_llamafactory(examples, a.threads, RESULTS / "logs")
                else:
                    res = run_worker(spec, threads=a.threads, log_dir=RESULTS / "logs")
            except Exception as e:  # one arm failing must not hide the others' numbers
                skipped[name] = f"failed: {str(e).splitlines()[0]}"
                print(f"    {skipped[name]}", flush=True)
                continue
            results[name].append(res)
            print(f"    train {res['train_s']:.1f} s, {res['steps']} steps, useful {res.get('useful_tokens_per_s')} "
                  "tok/s",
                  flush=True)
    peaks.append(matmul_peak(a.threads))
    peak = best_peak(*peaks)
    # the reference: the plain-TRL baseline, or the first arm measured when the baseline was not asked for
    measured = [n for n, r in results.items() if r]
    reference = "trl-packing-off" if results.get("trl-packing-off") else next(iter(measured), None)
    base = results.get(reference) or []
    rows = []
    for name, res in results.items():
        if not res:
            continue
        speed = ratio_stats(base, res, "useful_tokens_per_s") if base else {"median": None}
        epoch = ratio_stats(base, res, "train_s", higher_is_better=False) if base else {"median": None}
        pad = median_of(res, "padding_fraction", 3)
        acc = median_of(res, "accuracy", 4)
        rows.append(f"| {name} | {fmt_ratio(speed)} | {fmt_ratio(epoch)} | {res[0]['steps']} | "
                    f"{'n/a' if pad is None else f'{pad:.1%}'} | {median_of(res, 'train_loss', 4)} | "
                    f"{'-' if acc is None else acc} | {median_of(res, 'peak_rss_train_mb', 0)} | "
                    f"{median_of(res, 'useful_tokens_per_s')} | {median_of(res, 'train_s')} | "
                    f"{fmt_mfu(median_mfu(res, peak))} |")
    md = ["# SFT / generative path: packing and padding-free vs plain SFTTrainer (SmolLM2-135M, SST-2 as text)", "",
          f"Command: `{command_line()}`", "",
          f"{examples} SST-2 training sentences as prompt -> label word, one full epoch per arm, lr "
          f"{HYPER['learning_rate']}, batch {HYPER['batch_size']}, max_length {HYPER['max_length']}, LoRA r16 "
          f"all-linear, precision as each arm's defaults say (TRL's: bf16 autocast). Ratios are against {reference} "
          f"measured in the same round ({a.repeats} round(s)). Packed arms take fewer, fuller optimizer steps: compare "
          "epoch time and useful tokens/s. LLaMA-Factory's tokens are its own `num_input_tokens_seen` (non-padding), "
          "its time its own `train_runtime`, its memory the peak RSS of the whole CLI process.", "",
          f"| arm | useful tok/s vs {reference} | epoch speed vs {reference} | optimizer steps | padding | train loss "
          "| label accuracy | peak RSS MB | useful tok/s (abs.) | train s (abs.) | model GFLOP/s (MFU) |",
          "|---|---|---|---|---|---|---|---|---|---|---|", *rows]
    if skipped:
        md += ["", "Not run:"] + [f"- {k}: {v}" for k, v in skipped.items()]
    md += ["", peak_line(peaks) + " LLaMA-Factory's run is not instrumented for MFU (n/a).", "",
           env_lines(env, started)]
    payload = {"benchmark": "sft", "matmul_peaks": peaks, "command": command_line(), "examples": examples,
               "hyper": HYPER, "environment": env, "skipped": skipped, "runs": results}
    write_results(a.name + ("_quick" if a.quick else ""), payload, "\n".join(md))


if __name__ == "__main__":
    main()
