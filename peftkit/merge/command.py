"""The `peftkit merge` and `peftkit merge-adapters` parsers and the functions they run (nothing heavy is
imported until a command runs)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    add_merge_parser(subparsers)
    add_merge_adapters_parser(subparsers)


def add_merge_parser(subparsers) -> None:
    merge = subparsers.add_parser(
        "merge", help="merge a run's adapter into full weights, verified against the adapter model",
        description="Merge the adapter in RUN_DIR into full-precision weights and save a plain transformers model "
                    "(RUN_DIR/merged). The merged model is checked against the adapter model on eval rows; a merge "
                    "that loses more accuracy than merge.max_accuracy_drop fails and is not put in place. Defaults "
                    "come from the recipe's merge section.")
    merge.add_argument("run_dir", metavar="RUN_DIR", help="the output_dir of a train run")
    merge.add_argument("--out", metavar="DIR", help="where to write the merged model (default: RUN_DIR/merged)")
    merge.add_argument("--dtype", choices=("bf16", "fp16", "fp32"),
                       help="dtype of the saved weights (the merge itself is float32); default merge.dtype")
    merge.add_argument("--base", choices=("original", "dequantized", "auto"),
                       help="for 4/8-bit runs: merge into the original weights, the dequantized weights the "
                            "adapter was trained against, or auto (measure both, keep the closer); default merge.base")
    merge.add_argument("--verify-samples", metavar="N|all", type=verify_samples_arg,
                       help="eval rows to verify on (default merge.verify_samples, 256)")
    merge.add_argument("--max-accuracy-drop", metavar="X", type=float,
                       help="fail if accuracy drops more than this fraction (default merge.max_accuracy_drop, 0.005)")
    merge.set_defaults(func=cmd_merge)


def verify_samples_arg(text: str) -> int | str:
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a positive number of rows, or all") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a positive number of rows, or all")
    return value


def cmd_merge(args) -> int:
    from peftkit.merge.into_base import merge_run

    merge_run(args.run_dir, args.out, dtype=args.dtype, base=args.base, verify_samples=args.verify_samples,
              max_accuracy_drop=args.max_accuracy_drop)
    return 0


def add_merge_adapters_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "merge-adapters", help="combine several runs' adapters into one, evaluated on every task",
        description="Load the adapters of RUN_DIRs (generative_classification or multitask runs on one base) and "
                    "combine them with PEFT's add_weighted_adapter into OUT, a run folder `peftkit evaluate` can "
                    "use; evaluate it on every source task and write OUT/merge_report.json and .md (merged vs each "
                    "source adapter, per task).")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--method", required=True, choices=("linear", "cat", "ties", "dare_linear", "dare_ties"),
                   help="linear: PEFT's rough sum of A and B (same rank); cat: exact sum of the updates (rank adds "
                        "up); ties, dare_linear, dare_ties: task-vector merging with pruning to --density")
    p.add_argument("--weights", type=float, nargs="+", metavar="W", help="one weight per run (default: 1 each)")
    p.add_argument("--density", type=float, help="ties/dare: share of each update kept (default 0.5)")
    p.add_argument("--seed", type=int, default=42, help="seed of dare's random pruning (default 42)")
    p.add_argument("--out", required=True, metavar="DIR", help="the new run folder (must not exist or be empty)")
    p.set_defaults(func=cmd_merge_adapters)


def cmd_merge_adapters(args) -> int:
    from peftkit.merge.adapters import merge_adapters

    merge_adapters(args.run_dirs, args.out, args.method, args.weights, args.density, args.seed)
    return 0
