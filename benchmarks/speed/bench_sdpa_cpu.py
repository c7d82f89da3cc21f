"""Attention on this CPU at the shapes peftkit's SmolLM2 training steps give it (benchmarks/speed/profile_step.py found
attention at 14-36% of a step): forward + backward of ``scaled_dot_product_attention``, bf16, 1 thread.

    OMP_NUM_THREADS=1 python -m benchmarks.speed.bench_sdpa_cpu [--repeats 3]

Cases (q: batch x 9 heads x tokens x 64, k/v: 3 heads, grouped-query as in SmolLM2):
* ``cls16``: 16 sentences of 30 tokens with a padding mask (what the classification head path runs, batch 16);
* ``cls64``: 64 sentences of 15 tokens with a padding mask (batch 64 of short sentences);
* ``packed8``: TRL's padding-free packing flattens a batch of 8 packed rows of ~62 tokens into ONE row of 496
  tokens with a block-diagonal mask (what transformers builds from position_ids), against ``rows8``: the same
  tokens as 8 separate causal rows of 62 (what the attention needs).
Each case with the flash kernel sdpa picks by default and with the math kernel (``SDPBackend.MATH``). Seconds are
the best of ``repeats`` (one call each after a warm-up) and comparable only within this run; the load is recorded.
Writes benchmarks/results/sdpa_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import os
import time

from benchmarks.lib.common import command_line, environment, write_results


def case_tensors(name: str):
    import torch

    g = torch.Generator().manual_seed(0)

    def qkv(b, t):
        make = lambda h: torch.randn(b, h, t, 64, generator=g, dtype=torch.bfloat16, requires_grad=True)  # noqa: E731
        return make(9), make(3), make(3)

    if name in ("cls16", "cls64"):
        b, t = (16, 30) if name == "cls16" else (64, 15)
        lengths = torch.randint(t // 2, t + 1, (b,), generator=g)
        keep = torch.arange(t)[None, :] < lengths[:, None]  # right padding, as the collator pads
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        return qkv(b, t), (causal[None] & keep[:, None, :])[:, None], False
    if name == "packed8":
        seq = torch.arange(496) // 62  # 8 sequences of 62 in one row
        block = (seq[:, None] == seq[None, :]) & torch.ones(496, 496, dtype=torch.bool).tril()
        return qkv(1, 496), block[None, None], False
    return qkv(8, 62), None, True  # rows8


def fwd_bwd_seconds(name: str, backend, repeats: int, backward: bool = True) -> float:
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    (q, k, v), mask, causal = case_tensors(name)
    times = []
    for i in range(repeats + 1):
        started = time.perf_counter()
        with sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
        if backward:
            out.float().sum().backward()
        if i:  # the first call is the warm-up
            times.append(time.perf_counter() - started)
        q.grad = k.grad = v.grad = None
    return min(times)


def main() -> None:
    import torch
    from torch.nn.attention import SDPBackend

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--forward-only", action="store_true", help="time the forward alone (evaluation, label scoring)")
    p.add_argument("--cases", default="cls16,cls64,packed8,rows8")
    a = p.parse_args()
    torch.set_num_threads(1)
    env = environment(1)
    backends = {"flash (default)": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}
    rows = []
    for case in a.cases.split(","):
        for label, backend in backends.items():
            seconds = fwd_bwd_seconds(case, backend, a.repeats, backward=not a.forward_only)
            rows.append({"case": case, "backend": label, "ms": round(seconds * 1000, 2),
                         "load_avg": round(os.getloadavg()[0], 2)})
            print(rows[-1], flush=True)
    what = "forward only" if a.forward_only else "fwd + bwd"
    title = "forward" if a.forward_only else "forward + backward"
    md = [f"# sdpa {title} on this CPU (bf16, 1 thread, SmolLM2 heads: 9 q / 3 kv, head dim 64)", "",
          f"Command: `{command_line()}`", "", f"| case | kernel | ms per layer call ({what}, best of "
          f"{a.repeats}) | load |", "|---|---|---|---|",
          *[f"| {r['case']} | {r['backend']} | {r['ms']} | {r['load_avg']} |" for r in rows], "",
          "A training step makes 30 such calls (one per layer). Cases in the module docstring of "
          "benchmarks/speed/bench_sdpa_cpu.py. Machine shared, one core busy with another training run: times are "
          f"under load (load average {env['load_avg_at_start'][0]} at start). torch {env['torch']}, {env['date']}."]
    name = "sdpa_cpu_forward" if a.forward_only else "sdpa_cpu"
    write_results(name, {"benchmark": "sdpa_cpu", "command": command_line(), "environment": env,
                         "rows": rows}, "\n".join(md))


if __name__ == "__main__":
    main()
