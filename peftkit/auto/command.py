"""The `peftkit auto` parser and the function it runs (nothing heavy is imported until the command runs)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    auto = subparsers.add_parser(
        "auto", help="spend a time budget finding the best model, method and hyperparameters for a labelled file",
        description="Search backbones (default: the packaged MiniLM and SmolLM2), methods (classification head; "
                    "generative classification for causal LMs) and hyperparameters (learning rate, LoRA rank, "
                    "epochs, batch size) with Optuna and successive halving, within a wall-clock budget that "
                    "includes the final evaluation. Each trial is a normal run of the recipe `peftkit init` writes "
                    "for its backbone, chosen on a validation split of the training rows; the winner is evaluated "
                    "once on EVAL. Writes OUT/best_recipe.yaml, OUT/winner (its run folder) and "
                    "OUT/leaderboard.{md,csv,png}. Killed? Run the same command: it uses the budget that is left.")
    auto.add_argument("train_file", metavar="TRAIN", help="the labelled training file (as for peftkit init)")
    auto.add_argument("--eval", dest="eval_file", metavar="EVAL",
                      help="the evaluation file, read once for the winner (default: rows init holds out of TRAIN)")
    auto.add_argument("--budget", required=True, metavar="DURATION",
                      help="wall-clock limit for the whole search and the final evaluation: 30m, 90s, 1h30m")
    auto.add_argument("--models", metavar="A,B,...",
                      help="backbones, comma-separated: packaged:NAME, hub ids or local folders "
                           "(default: packaged:all-minilm-l6-v2,packaged:smollm2-135m-instruct)")
    auto.add_argument("--workers", type=int, default=1, metavar="N",
                      help="worker processes on this machine sharing the storage (default 1)")
    auto.add_argument("--storage", metavar="URL",
                      help="Optuna storage shared by every worker (default sqlite:///OUT/auto.db); other machines: "
                           "an RDB URL or journal:///shared/file, with --worker-index K and the same TRAIN/--models")
    auto.add_argument("--out", metavar="DIR", help="the search's folder (default: auto-TRAIN_STEM)")
    auto.add_argument("overrides", metavar="section.key=value", nargs="*",
                      help="recipe values for every trial, e.g. data.max_train_samples=4000 (not a searched key)")
    auto.add_argument("--worker-index", type=int, metavar="K", help=argparse.SUPPRESS)
    auto.set_defaults(func=cmd_auto)


def cmd_auto(args) -> int:
    from peftkit.auto.driver import AutoOptions, auto_command

    return auto_command(AutoOptions(train_file=args.train_file, budget=args.budget, eval_file=args.eval_file,
                                    models=args.models, workers=args.workers, storage=args.storage, out=args.out,
                                    worker_index=args.worker_index, overrides=list(args.overrides)))
