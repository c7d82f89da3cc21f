"""The `peftkit` command line: one subcommand per stage of the flow."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from peftkit import __version__
from peftkit.augment import command as augment
from peftkit.auto import command as auto
from peftkit.core.atomic import storage_error
from peftkit.errors import PeftkitError, RunStopped
from peftkit.init import command as init
from peftkit.merge import command as merge
from peftkit.push import command as push
from peftkit.recipe.arguments import add_recipe_arguments, resolve_recipe_args
from peftkit.report import command as report
from peftkit.serve import command as serve
from peftkit.sweep import command as sweep


class Terminated(BaseException):
    """SIGTERM outside training (training has its own handler, which saves a checkpoint first)."""


def _terminated(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    from peftkit.core import quiet
    from peftkit.core.progress import quiet_library_bars_in_logs

    quiet_library_bars_in_logs()  # before transformers is imported: no tqdm redraws in log files
    # before the command runs: it imports transformers and bitsandbytes, whose warnings quiet filters
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
    for add_parser in COMMANDS:
        add_parser(sub)
    for command in sub.choices.values():
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="also show third-party warnings peftkit hides by default")
    return parser


def add_train_parser(sub) -> None:
    train = sub.add_parser("train", help="fine-tune an adapter as a recipe says, then evaluate it",
                           description="Train an adapter from a recipe. Without a recipe, runs the built-in "
                                       "quickstart: a real fine-tune of a packaged model on SST-2.")
    add_recipe_arguments(train, optional=True)
    train.add_argument("--resume", action="store_true",
                       help="continue from the latest checkpoint in the run folder")
    # the deepspeed launcher adds it
    train.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    train.set_defaults(func=cmd_train)


def add_validate_parser(sub) -> None:
    validate = sub.add_parser("validate", help="check a recipe (keys, types, files, columns) without training",
                              description="Check a recipe without loading a model: keys, types, combinations, "
                                          "data files, columns and labels.")
    add_recipe_arguments(validate, optional=True, default_help=False)
    validate.set_defaults(func=cmd_validate)


def add_evaluate_parser(sub) -> None:
    evaluate = sub.add_parser("evaluate", help="evaluate a run's adapter: metrics.json, report, confusion matrix",
                              description="Evaluate the trained adapter in RUN_DIR on its eval split, or on --data.")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="the output_dir of a train run")
    evaluate.add_argument("--data", metavar="FILE", help="evaluate on this file instead (same columns as the recipe)")
    evaluate.set_defaults(func=cmd_evaluate)


# Every subcommand, in the order `peftkit --help` lists them: train, validate and evaluate are run.py's (their
# parsers are above); each command folder's command.py declares its own (merge: also merge-adapters; serve: also
# generate). A parser imports nothing heavy: the function it runs does, when it runs.
COMMANDS = (
    init.add_parser,
    add_train_parser,
    add_validate_parser,
    sweep.add_parser,
    augment.add_parser,
    add_evaluate_parser,
    report.add_parser,
    merge.add_parser,
    push.add_parser,
    serve.add_parser,
    auto.add_parser,
)


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
