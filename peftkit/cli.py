"""The `peftkit` command line: one subcommand per stage of the flow."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from peftkit import __version__
from peftkit.core.atomic import storage_error
from peftkit.errors import PeftkitError, RunStopped
from peftkit.recipe.task_traits import tasks_where

DEFAULT_RECIPE = "sst2_quickstart.yaml"


class Terminated(BaseException):
    """SIGTERM outside training (training has its own handler, which saves a checkpoint first)."""


def _terminated(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    from peftkit.core import quiet
    from peftkit.core.progress import quiet_library_bars_in_logs

    quiet_library_bars_in_logs()  # before transformers is imported: no tqdm redraws in log files
    # before the parser is built: building it imports the push command, hence transformers and bitsandbytes
    if "--verbose" in (sys.argv[1:] if argv is None else argv):
        os.environ["PEFTKIT_VERBOSE"] = "1"
    quiet.install()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        take_late_overrides(parser, args, extra)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous = _install_sigterm()
    try:
        return args.func(args) or 0
    except PeftkitError as e:
        print(f"peftkit: error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:
        print(f"peftkit: {e}", file=sys.stderr)
        return e.exit_code
    except Terminated:
        from peftkit.core.console import current_stage

        print(f"peftkit: stopped by SIGTERM while {current_stage()}; nothing was left half-written. Run the same "
              "command again (a train run with checkpoints continues with --resume)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("peftkit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = storage_error(e)
        if message is None:
            raise
        print(f"peftkit: error: {message}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _install_sigterm():
    """SIGTERM (a scheduler, `kill`) while loading or evaluating: one line and exit 143, not a silent death."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _terminated)


def take_late_overrides(parser: argparse.ArgumentParser, args, extra: list[str]) -> None:
    """`peftkit train RECIPE --resume train.max_steps=5`: argparse stops taking positionals at an option; overrides
    written after it are still overrides. Anything else unknown is argparse's usual error."""
    unknown = [item for item in extra if item.startswith("-") or "=" not in item or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = [*args.overrides, *extra]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peftkit",
        description="Parameter-efficient fine-tuning from YAML recipes: train, evaluate, merge, push.",
        epilog="Run 'peftkit COMMAND --help' for a command's options. Multi-GPU: "
               "accelerate launch --config_file accelerate_configs/ddp.yaml -m peftkit train RECIPE",
    )
    parser.add_argument("--version", action="version", version=f"peftkit {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="also show third-party warnings peftkit hides by default (load reports, deprecations)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    init = sub.add_parser("init", help="write a commented recipe for your own labelled data file",
                          description="Inspect DATA_FILE (csv with any delimiter, tsv, jsonl, parquet; header or "
                                      "not), find its text and label columns, count the labels, flag imbalance, "
                                      "choose a classification head (encoders) or generative classification "
                                      "(causal LMs), and write a commented recipe that opens with its command.")
    init.add_argument("data_file", metavar="DATA_FILE", help="the labelled training file")
    init.add_argument("--eval", metavar="EVAL_FILE", help="an evaluation file with the same columns "
                                                          "(default: hold out part of DATA_FILE)")
    init.add_argument("--model", default="packaged:all-minilm-l6-v2",
                      help="base model: packaged:all-minilm-l6-v2 (default, fast: classification head), "
                           "packaged:smollm2-135m-instruct (generative classification), a hub id or a folder")
    init.add_argument("--task", choices=("auto", *tasks_where("init_writes")), default="auto",
                      help="auto (default): generative for causal LMs, a classification head for encoders")
    init.add_argument("--out", metavar="RECIPE", help="where to write the recipe (default: DATA_FILE's name .yaml)")
    init.add_argument("--output-dir", metavar="DIR", help="the run folder the recipe names (default: runs/NAME-MODEL)")
    init.add_argument("--text-column", metavar="NAME", help="the text column (default: detected)")
    init.add_argument("--label-column", metavar="NAME", help="the label column (default: detected)")
    init.add_argument("--header", choices=("auto", "yes", "no"), default="auto",
                      help="whether csv/tsv files start with a header row (default: detected)")
    init.add_argument("--force", action="store_true", help="replace an existing recipe file")
    init.set_defaults(func=cmd_init)

    train = sub.add_parser("train", help="fine-tune an adapter as a recipe says, then evaluate it",
                           description="Train an adapter from a recipe. Without a recipe, runs the built-in "
                                       "quickstart: a real fine-tune of a packaged model on SST-2.")
    add_recipe_arguments(train, optional=True)
    train.add_argument("--resume", action="store_true",
                       help="continue from the latest checkpoint in the run folder")
    train.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # the deepspeed launcher adds it
    train.set_defaults(func=cmd_train)

    validate = sub.add_parser("validate", help="check a recipe (keys, types, files, columns) without training",
                              description="Check a recipe without loading a model: keys, types, combinations, "
                                          "data files, columns and labels.")
    add_recipe_arguments(validate, optional=True, default_help=False)
    validate.set_defaults(func=cmd_validate)

    sweep = sub.add_parser("sweep", help="search a recipe's hyperparameters (its sweep: section) with Optuna",
                           description="Run the trials of the recipe's sweep: section (Optuna TPE, median pruning), "
                                       "each a normal run in OUTPUT_DIR/trials/trial-N chosen on a validation split "
                                       "carved from the training rows; then write trials.csv/.md, sweep.png and "
                                       "best_recipe.yaml. Run the same command again to resume.")
    add_recipe_arguments(sweep, optional=False)
    sweep.add_argument("--worker-index", type=int, metavar="K",
                       help="run as worker K only (another machine: with sweep.storage=URL shared by every worker)")
    sweep.add_argument("--report-only", action="store_true", help="write the table, plot and best recipe; no trials")
    sweep.set_defaults(func=cmd_sweep)

    augment = sub.add_parser("augment", help="write an augmented copy of a recipe's training file (its augment: section)",
                             description="Write the recipe's training rows plus new ones (augment.methods: edit, "
                                         "paraphrase) beside data.train_file, with a source column; new rows equal "
                                         "to a training row or an eval sentence are dropped, and with "
                                         "augment.teacher so are rows the teacher doubts. Counts per method go to "
                                         "FILE.report.json.")
    add_recipe_arguments(augment, optional=False)
    augment.add_argument("--out", metavar="FILE", help="the augmented file (default: TRAIN.augmented.EXT)")
    augment.set_defaults(func=cmd_augment)

    evaluate = sub.add_parser("evaluate", help="evaluate a run's adapter: metrics.json, report, confusion matrix",
                              description="Evaluate the trained adapter in RUN_DIR on its eval split, or on --data.")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="the output_dir of a train run")
    evaluate.add_argument("--data", metavar="FILE", help="evaluate on this file instead (same columns as the recipe)")
    evaluate.set_defaults(func=cmd_evaluate)

    merge = sub.add_parser("merge", help="merge a run's adapter into full weights, verified against the adapter model",
                           description="Merge the adapter in RUN_DIR into full-precision weights and save a plain "
                                       "transformers model (RUN_DIR/merged). The merged model is checked against "
                                       "the adapter model on eval rows; a merge that loses more accuracy than "
                                       "merge.max_accuracy_drop fails and is not put in place. Defaults come from "
                                       "the recipe's merge section.")
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
    add_merge_adapters_parser(sub)

    from peftkit.push.hub import add_push_parser

    add_push_parser(sub)

    from peftkit.serve.command import add_serve_parser

    add_serve_parser(sub)

    from peftkit.auto.command import add_parser as add_auto_parser

    add_auto_parser(sub)

    generate = sub.add_parser("generate", help="a causal-LM run's answer to a text: label probabilities or generated text",
                              description="Answer TEXT with the base model + trained adapter of RUN_DIR. "
                                          "generative_classification runs: TEXT goes through the run's "
                                          "data.prompt_template (and the chat template only if the run used it) and "
                                          "every label is scored: prints each label name with its probability, "
                                          "the prediction first. sft runs: the run's prompt template and chat "
                                          "template as trained, then greedy generation.")
    generate.add_argument("run_dir", metavar="RUN_DIR", help="the output_dir of a train run")
    generate.add_argument("prompt", metavar="TEXT", help="the text to classify, or the prompt (the template's one field)")
    generate.add_argument("--max-new-tokens", type=int, default=128, metavar="N", help="longest answer (default 128)")
    generate.add_argument("--raw", action="store_true",
                          help="no templates, no label scoring: TEXT as it is, greedy generation (the behaviour "
                               "before templates were applied, without the chat template)")
    generate.set_defaults(func=cmd_generate)
    for command in sub.choices.values():
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="also show third-party warnings peftkit hides by default")
    return parser


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


def add_recipe_arguments(parser: argparse.ArgumentParser, optional: bool, default_help: bool = True) -> None:
    parser.add_argument("recipe", metavar="RECIPE", nargs="?" if optional else None,
                        help="recipe YAML file" + (" (default: the built-in SST-2 quickstart)" if default_help else ""))
    parser.add_argument("overrides", metavar="section.key=value", nargs="*",
                        help="override recipe values, e.g. train.learning_rate=1e-4 data.max_train_samples=500")


def resolve_recipe_args(args) -> tuple[str, list[str]]:
    """A first positional with '=' is an override, not a recipe (`peftkit train train.max_steps=5`)."""
    recipe, overrides = args.recipe, list(args.overrides)
    if recipe is not None and "=" in recipe and not os.path.exists(recipe):
        overrides.insert(0, recipe)
        recipe = None
    if recipe is None:
        from importlib.resources import files

        recipe = str(files("peftkit") / "defaults" / DEFAULT_RECIPE)
    return recipe, overrides


def cmd_train(args) -> int:
    from peftkit.recipe import load_recipe

    recipe = load_recipe(*resolve_recipe_args(args))
    from peftkit.run import run

    try:
        run(recipe, resume=args.resume)
    except Exception as e:
        message = storage_error(e, where=recipe.output_dir)
        if message is None:
            raise
        raise PeftkitError(message) from None
    return 0


def cmd_sweep(args) -> int:
    from peftkit.sweep.driver import sweep_command

    return sweep_command(args.recipe, list(args.overrides), worker_index=args.worker_index,
                         report_only=args.report_only)


def cmd_augment(args) -> int:
    from peftkit.augment.rows import augment_command

    augment_command(args.recipe, list(args.overrides), args.out)
    return 0


def cmd_validate(args) -> int:
    from peftkit.recipe import load_recipe
    from peftkit.run import check_recipe_inputs

    if args.recipe is None or ("=" in args.recipe and not os.path.exists(args.recipe)):
        raise PeftkitError("validate needs a recipe file: peftkit validate RECIPE.yaml [section.key=value ...]")
    recipe = load_recipe(args.recipe, args.overrides)
    print(check_recipe_inputs(recipe))
    return 0


def cmd_evaluate(args) -> int:
    from peftkit.run import evaluate_saved_run

    evaluate_saved_run(args.run_dir, args.data)
    return 0


def cmd_merge(args) -> int:
    from peftkit.merge.into_base import merge_run

    merge_run(args.run_dir, args.out, dtype=args.dtype, base=args.base, verify_samples=args.verify_samples,
              max_accuracy_drop=args.max_accuracy_drop)
    return 0


def add_merge_adapters_parser(sub) -> None:
    p = sub.add_parser("merge-adapters", help="combine several runs' adapters into one, evaluated on every task",
                       description="Load the adapters of RUN_DIRs (generative_classification or multitask runs on one "
                                   "base) and combine them with PEFT's add_weighted_adapter into OUT, a run folder "
                                   "`peftkit evaluate` can use; evaluate it on every source task and write "
                                   "OUT/merge_report.json and .md (merged vs each source adapter, per task).")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--method", required=True, choices=("linear", "cat", "ties", "dare_linear", "dare_ties"),
                   help="linear: PEFT's rough sum of A and B (same rank); cat: exact sum of the updates (rank adds up); "
                        "ties, dare_linear, dare_ties: task-vector merging with pruning to --density")
    p.add_argument("--weights", type=float, nargs="+", metavar="W", help="one weight per run (default: 1 each)")
    p.add_argument("--density", type=float, help="ties/dare: share of each update kept (default 0.5)")
    p.add_argument("--seed", type=int, default=42, help="seed of dare's random pruning (default 42)")
    p.add_argument("--out", required=True, metavar="DIR", help="the new run folder (must not exist or be empty)")
    p.set_defaults(func=cmd_merge_adapters)


def cmd_merge_adapters(args) -> int:
    from peftkit.merge.adapters import merge_adapters

    merge_adapters(args.run_dirs, args.out, args.method, args.weights, args.density, args.seed)
    return 0


def cmd_init(args) -> int:
    from peftkit.init.recipe_writer import init_recipe

    _, summary = init_recipe(args.data_file, eval_file=args.eval, model=args.model, task=args.task, out=args.out,
                             text_column=args.text_column, label_column=args.label_column, header=args.header,
                             output_dir=args.output_dir, force=args.force)
    print(summary)
    return 0


def cmd_generate(args) -> int:
    from peftkit.serve.generate import generate

    print(generate(args.run_dir, args.prompt, args.max_new_tokens, raw=args.raw))
    return 0
