"""Does sdpa's math kernel compute what the default (flash) kernel computes on the real model? One forward +
backward of SmolLM2-135M on real SST-2 batches, each kernel, in fp32 and under bf16 autocast (peftkit's CPU
default), with the same weights and the same batch.

    OMP_NUM_THREADS=1 python -m benchmarks.quality.check_attention_numerics

Batches: the classification head (recipes/sst2/smollm2_lora_cls.yaml's model, a new seeded 2-class head) on 16
right-padded sentences; the causal LM on TRL's padding-free row of 16 prompts + label words (packed, position_ids).
Reported per batch: the loss under each kernel and precision, |math - default|, and for scale |bf16 - fp32| (what
autocast alone moves), plus the largest difference of any gradient. Writes results/attention_numerics.json/.md.
"""

from __future__ import annotations

import os
import time

from benchmarks.lib.common import SHARED_DATA, command_line, environment, write_results

SENTENCES = 16


def sst2_rows() -> list[tuple[str, int]]:
    lines = (SHARED_DATA / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1: SENTENCES + 1]
    return [(text.strip(), int(label)) for text, label in (line.rsplit("\t", 1) for line in lines)]


def loss_and_grads(model, batch: dict, kernel: str, bf16: bool):
    import torch

    from peftkit.trainer.attention import attention_kernel

    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), attention_kernel(kernel, "cpu"):
        loss = model(**batch, use_cache=False).loss
    loss.backward()
    grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
    return float(loss), grads


def compare(name: str, model, batch: dict) -> dict:
    out = {"batch": name}
    runs = {(k, p): loss_and_grads(model, batch, k, p == "bf16") for k in ("default", "math") for p in ("fp32", "bf16")}
    for p in ("fp32", "bf16"):
        (ld, gd), (lm, gm) = runs[("default", p)], runs[("math", p)]
        out[p] = {"loss_default": round(ld, 6), "loss_math": round(lm, 6), "loss_gap": abs(ld - lm),
                  "max_grad_gap": float((gd - gm).abs().max()), "max_grad": float(gd.abs().max())}
    out["bf16_vs_fp32_loss_gap_default_kernel"] = abs(runs[("default", "bf16")][0] - runs[("default", "fp32")][0])
    print(out, flush=True)
    return out


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from peftkit.model.packaged import resolve_model_path

    torch.set_num_threads(1)
    started = time.time()
    env = environment(1)
    folder = resolve_model_path("packaged:smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(folder)
    rows = sst2_rows()
    results = []
    torch.manual_seed(0)
    cls = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2, attn_implementation="sdpa",
                                                             pad_token_id=tok.pad_token_id)
    batch = dict(tok([t for t, _ in rows], padding=True, truncation=True, max_length=64, return_tensors="pt"))
    batch["labels"] = torch.tensor([y for _, y in rows])
    results.append(compare(f"classification head, {SENTENCES} padded sentences", cls, batch))
    del cls
    lm = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    words = (" negative", " positive")
    examples = []
    for text, y in rows:
        prompt = tok(f"Review: {text}\nSentiment:")["input_ids"]
        answer = tok(words[y])["input_ids"] + [tok.eos_token_id]
        examples.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})  # loss: label word
    packed = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(examples)
    results.append(compare(f"causal LM, {SENTENCES} prompts packed into one padding-free row", lm, packed))
    md = ["# sdpa math vs default kernel on SmolLM2-135M: same batch, same weights", "",
          f"Command: `{command_line()}`", "",
          "| batch | precision | loss (default kernel) | loss (math) | loss gap | largest gradient gap (largest "
          "gradient) | for scale: bf16 vs fp32 loss gap (default kernel) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for p in ("fp32", "bf16"):
            x = r[p]
            md.append(f"| {r['batch']} | {p} | {x['loss_default']:.6f} | {x['loss_math']:.6f} | {x['loss_gap']:.2e} | "
                      f"{x['max_grad_gap']:.2e} ({x['max_grad']:.2e}) | "
                      f"{r['bf16_vs_fp32_loss_gap_default_kernel']:.2e} |")
    md += ["", f"torch {env['torch']}, transformers {env['transformers']}; load average {os.getloadavg()[0]:.2f}; "
           f"{env['date']}, {time.time() - started:.0f} s."]
    write_results("attention_numerics", {"benchmark": "attention_numerics", "command": command_line(),
                                         "environment": env, "results": results}, "\n".join(md))


if __name__ == "__main__":
    main()
