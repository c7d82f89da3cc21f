"""Each speed lever of peftkit on and off, side by side, on the real `peftkit train` path.

    python -m benchmarks.speed.bench_levers [--quick] [--model smollm2|minilm|smollm2-gen] [--repeats 2]

Arms (all peftkit, same recipe, same training subset, same strided epoch, same number of optimizer steps):
  all-off          random batches, fp32, padded to multiples of 8: peftkit before its speed defaults (1.00x)
  +group_by_length length-grouped batches only
  +bf16            bf16 autocast only
  group+bf16+pad8  both, padded to multiples of 8
  group+bf16+pad1  both, padded to the longest in the batch
  defaults         what peftkit does now (on this CPU: group_by_length + bf16 + no multiple-of-8 padding)
  defaults+ckpt    the defaults plus gradient checkpointing
  attn-default     the defaults with model.cpu_attention_kernel=default: sdpa picks its kernel (flash on CPU)
  attn-math        the defaults with model.cpu_attention_kernel=math: sdpa's math kernel on CPU
                   (the two attention arms log every step's loss: same attention, so the losses must agree)
--model smollm2-gen runs the generative recipe (recipes/sst2/smollm2_lora_gen.yaml, packed padding-free rows)
through peftkit's SFT path; only the defaults-based arms make sense there.
torch.compile has its own benchmark (bench_compile.py): its warm-up alone is longer than these runs.

Writes benchmarks/results/levers_<model>.json and .md.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.lib.common import (
    ALL_LEVERS_OFF,
    MODELS,
    RESULTS,
    arg_threads_help,
    best_peak,
    cls_arm,
    command_line,
    env_lines,
    environment,
    fmt_mfu,
    fmt_ratio,
    interleaved,
    matmul_peak,
    median_mfu,
    median_of,
    peak_line,
    ratio_stats,
    write_results,
)

# arm -> (recipe overrides, collator pad multiple: 8, 0 = none, None = peftkit's own choice)
LEVERS = {
    "all-off": (ALL_LEVERS_OFF, 8),
    "+group_by_length": (["train.bf16=false"], 8),
    "+bf16": (["train.train_sampling_strategy=random"], 8),
    "group+bf16+pad8": ([], 8),
    "group+bf16+pad1": ([], 0),
    "defaults": ([], None),
    "defaults+ckpt": (["train.gradient_checkpointing=true"], None),
    "attn-default": (["model.cpu_attention_kernel=default", "train.logging_steps=1"], None),
    "attn-math": (["model.cpu_attention_kernel=math", "train.logging_steps=1"], None),
}
# --model -> (recipe, worker kind)
RECIPES = {**{name: (recipe, "peftkit_cls") for name, recipe in MODELS.items()},
           "smollm2-gen": ("recipes/sst2/smollm2_lora_gen.yaml", "peftkit_sft")}
NOTES = {
    "all-off": "random batches, fp32, pad to x8 (peftkit before)",
    "+group_by_length": "length-grouped batches only",
    "+bf16": "bf16 autocast only",
    "group+bf16+pad8": "both, padded to multiples of 8",
    "group+bf16+pad1": "both, padded to the batch's longest",
    "defaults": "what `peftkit train` does now",
    "defaults+ckpt": "plus gradient checkpointing",
    "attn-default": "defaults, sdpa picks its kernel (flash on CPU)",
    "attn-math": "defaults, sdpa's math kernel on CPU",
}


def first_losses(row: dict, n: int = 12) -> str:
    return ", ".join(f"{x:.4f}" for x in (row["losses"][0] or [])[:n]) or "-"


def loss_gap(reference: list[dict], candidate: list[dict]) -> float | None:
    """Largest |loss difference| at any logged step between the two arms' runs of the same round."""
    gaps = [abs(a - b) for ref, res in zip(reference, candidate) for a, b in zip(ref.get("losses", []),
                                                                                   res.get("losses", []))]
    return round(max(gaps), 5) if gaps else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one round, fewer steps (development)")
    p.add_argument("--model", choices=sorted(RECIPES), default="smollm2")
    p.add_argument("--examples", type=int, default=2000, help="training subset whose epoch is strided")
    p.add_argument("--stride", type=int, default=None, help="run every k-th batch of the epoch")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--levers", default=",".join(LEVERS), help="comma-separated subset of: " + ", ".join(LEVERS))
    p.add_argument("--reference", default="all-off", help="the arm the ratios are taken against")
    p.add_argument("--threads", type=int, default=1, help=arg_threads_help())
    p.add_argument("--name", default=None, help="results/<name>.json/.md (default levers_<model>[_quick])")
    a = p.parse_args()
    started = time.time()
    stride = a.stride or (25 if a.quick else 16)
    repeats = 1 if a.quick else a.repeats
    recipe, kind = RECIPES[a.model]
    names = [n for n in a.levers.split(",") if n]
    if a.reference not in names:
        names.insert(0, a.reference)
    arms = []
    for n in names:
        overrides, pad = LEVERS[n]
        extra = {"pad_to_multiple_of": pad} if pad is not None else {}
        arms.append(cls_arm(f"{a.model}:{n}", kind, recipe, examples=a.examples, stride=stride,
                            evaluate=False, overrides=overrides, **extra))
    env = environment(a.threads)
    peaks = [matmul_peak(a.threads)]  # the machine's peak, measured before and after the arms (MFU)
    results = interleaved(arms, repeats, threads=a.threads, log_dir=RESULTS / "logs")
    peaks.append(matmul_peak(a.threads))
    peak = best_peak(*peaks)
    ref = results[f"{a.model}:{a.reference}"]
    rows = []
    for n in names:
        res = results[f"{a.model}:{n}"]
        rows.append({
            "arm": n, "note": NOTES[n],
            "useful_tok_s_ratio": ratio_stats(ref, res, "useful_tokens_per_s"),
            "steps_per_s_ratio": ratio_stats(ref, res, "steps_per_s"),
            "padding_fraction": median_of(res, "padding_fraction", 3),
            "epoch_padding_fraction": median_of(res, "epoch_padding_fraction", 3),
            "peak_rss_mb": median_of(res, "peak_rss_train_mb", 0),
            "useful_tok_s": median_of(res, "useful_tokens_per_s", 1),
            "train_s": median_of(res, "train_s", 1),
            "steps": res[0]["steps"],
            "first_step_s": median_of(res, "first_step_s", 2),
            "mfu": median_mfu(res, peak),
            "losses": [r.get("losses") for r in res],
            "max_loss_gap_vs_reference": loss_gap(ref, res),
            "load_avg_after": [r["load_avg_after"] for r in res],
        })
    steps = rows[0]["steps"]
    md = [f"# Speed levers, one at a time ({a.model}, SST-2, peftkit train path)", "",
          f"Command: `{command_line()}`", "",
          f"Each arm trains the same {a.examples}-example SST-2 subset with the recipe `{recipe}`; the loop runs every "
          f"{stride}th batch of the real epoch order ({steps} optimizer steps per run), so each arm sees the same mix "
          f"of lengths as its whole epoch. Ratios are against `{a.reference}` measured in the same round "
          f"(rotating order, {repeats} round(s)): median (min-max, n). Absolute tok/s and seconds are context "
          "only.", "",
          f"| arm | what | useful tok/s vs {a.reference} | steps/s vs {a.reference} | padding (measured / whole epoch) "
          f"| peak RSS MB | useful tok/s (abs.) | train s (abs.) | model GFLOP/s (MFU) | max loss gap vs {a.reference} "
          "(logged steps) | load after each run |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['arm']} | {r['note']} | {fmt_ratio(r['useful_tok_s_ratio'])} | "
                  f"{fmt_ratio(r['steps_per_s_ratio'])}"
                  f" | {r['padding_fraction']:.1%} / {r['epoch_padding_fraction']:.1%} | {r['peak_rss_mb']:.0f} | "
                  f"{r['useful_tok_s']} | {r['train_s']} | {fmt_mfu(r['mfu'])} | "
                  f"{r['max_loss_gap_vs_reference'] if r['max_loss_gap_vs_reference'] is not None else '-'} | "
                  f"{', '.join(str(x) for x in r['load_avg_after'])} |")
    md += ["", "Training losses per logged step, first run of each arm: "
           + "; ".join(f"{r['arm']}: {first_losses(r)}" for r in rows),
           "", peak_line(peaks), "", env_lines(env, started)]
    payload = {"benchmark": "levers", "command": command_line(), "model": a.model, "recipe": recipe,
               "examples": a.examples, "stride": stride, "repeats": repeats, "environment": env, "rows": rows,
               "matmul_peaks": peaks,
               "runs": results}
    write_results(a.name or f"levers_{a.model}" + ("_quick" if a.quick else ""), payload, "\n".join(md))


if __name__ == "__main__":
    main()
