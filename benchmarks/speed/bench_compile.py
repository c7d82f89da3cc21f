"""torch.compile: does it pay back its warm-up within a run? peftkit defaults with and without `train.torch_compile`.

    python -m benchmarks.speed.bench_compile [--quick] [--model smollm2|minilm] [--steps 24] [--repeats 1]

Both arms: `peftkit train` defaults (length-grouped batches, bf16 autocast on CPUs with native bf16, no
multiple-of-8 padding on CPU) on the same strided epoch; the compiled arm adds `train.torch_compile=true`.
Sequence lengths vary from batch to batch, so the compiled arm may recompile (counted: dynamo's unique graphs).
Reported: the first step (compile warm-up included), the steady step time after it, the whole run, and the
break-even point = extra warm-up time / time saved per steady step (in optimizer steps).
Writes benchmarks/results/compile_<model>.json and .md.
"""

from __future__ import annotations

import argparse
import math
import time

from benchmarks.lib.common import (
    MODELS,
    RESULTS,
    arg_threads_help,
    cls_arm,
    command_line,
    env_lines,
    environment,
    fmt_ratio,
    interleaved,
    median_of,
    ratio_stats,
    write_results,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="MiniLM-sized run (development)")
    p.add_argument("--model", choices=sorted(MODELS), default="smollm2")
    p.add_argument("--examples", type=int, default=2000)
    p.add_argument("--steps", type=int, default=24, help="optimizer steps per run (strided over the epoch)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help=arg_threads_help())
    a = p.parse_args()
    started = time.time()
    model = "minilm" if a.quick else a.model
    steps = 8 if a.quick else a.steps
    recipe = MODELS[model]
    batch = 32 if model == "minilm" else 16
    stride = max(1, math.ceil(a.examples / batch) // steps)
    eager_name, compiled_name = f"{model}:defaults-eager", f"{model}:defaults+compile"
    arms = [cls_arm(eager_name, "peftkit_cls", recipe, examples=a.examples, stride=stride, evaluate=False),
            cls_arm(compiled_name, "peftkit_cls", recipe, examples=a.examples, stride=stride, evaluate=False,
                    overrides=["train.torch_compile=true"])]
    env = environment(a.threads)
    results = interleaved(arms, a.repeats, threads=a.threads, log_dir=RESULTS / "logs")
    eager, compiled = results[eager_name], results[compiled_name]
    total = ratio_stats(eager, compiled, "useful_tokens_per_s")
    steady = ratio_stats(eager, compiled, "steady_step_s_median", higher_is_better=False)
    e_first, c_first = median_of(eager, "first_step_s", 2), median_of(compiled, "first_step_s", 2)
    e_steady, c_steady = median_of(eager, "steady_step_s_median", 3), median_of(compiled, "steady_step_s_median", 3)
    saving = e_steady - c_steady
    break_even = math.ceil((c_first - e_first) / saving) if saving > 0 else None
    dyn = compiled[0].get("dynamo", {})
    md = [f"# torch.compile on the peftkit defaults ({model}, SST-2)", "",
          f"Command: `{command_line()}`", "",
          f"{compiled[0]['steps']} optimizer steps per run (every {stride}th batch of the {a.examples}-example epoch), "
          f"{a.repeats} A/B round(s). Ratios compiled / eager (>1 = compile faster), median (min-max, n).", "",
          "| figure | eager | compiled | compiled vs eager |", "|---|---|---|---|",
          f"| first step, s (compile warm-up in it) | {e_first} | {c_first} | |",
          f"| steady step, s (median after step 2) | {e_steady} | {c_steady} | {fmt_ratio(steady)} |",
          f"| whole run: useful tokens/s | {median_of(eager, 'useful_tokens_per_s')} | "
          f"{median_of(compiled, 'useful_tokens_per_s')} | {fmt_ratio(total)} |",
          f"| peak RSS, training process (MB) | {median_of(eager, 'peak_rss_train_mb', 0)} | "
          f"{median_of(compiled, 'peak_rss_train_mb', 0)} | |",
          f"| peak RSS, process + compile workers, sampled (MB) | {median_of(eager, 'tree_peak_rss_mb_sampled', 0)} | "
          f"{median_of(compiled, 'tree_peak_rss_mb_sampled', 0)} | |", "",
          f"Dynamo: {dyn.get('unique_graphs')} unique graphs, {dyn.get('graph_breaks')} graph breaks, "
          f"recompiles {dyn.get('recompiles')}.",
          "Break-even: "
          f"{'never (no steady-state saving)' if break_even is None else f'after ~{break_even} optimizer steps'} "
          "(extra warm-up / steady saving per step), if no later recompiles.", "", env_lines(env, started)]
    payload = {"benchmark": "compile", "command": command_line(), "model": model, "steps": steps, "stride": stride,
               "environment": env, "break_even_steps": break_even,
               "ratios": {"useful_tokens_per_s": total, "steady_step": steady}, "runs": results}
    write_results(f"compile_{model}" + ("_quick" if a.quick else ""), payload, "\n".join(md))


if __name__ == "__main__":
    main()
