"""The `peftkit` command line: one subcommand per stage of the flow."""

from __future__ import annotations

import argparse
import os
import sys

from peftkit import __version__
from peftkit.errors import PeftkitError, RunStopped
from peftkit.io import storage_error

DEFAULT_RECIPE = "sst2_quickstart.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except PeftkitError as e:
        print(f"peftkit: error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:
        print(f"peftkit: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("peftkit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = storage_error(e)
        if message is None:
            raise
        print(f"peftkit: error: {message}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peftkit",
        description="Parameter-efficient fine-tuning from YAML recipes: train, evaluate, merge, push.",
        epilog="Run 'peftkit COMMAND --help' for a command's options. Multi-GPU: "
               "accelerate launch --config_file accelerate_configs/ddp.yaml -m peftkit train RECIPE",
    )
    parser.add_argument("--version", action="version", version=f"peftkit {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

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
    add_recipe_arguments(validate, optional=False)
    validate.set_defaults(func=cmd_validate)

    evaluate = sub.add_parser("evaluate", help="evaluate a run's adapter: metrics.json, report, confusion matrix",
                              description="Evaluate the trained adapter in RUN_DIR on its eval split, or on --data.")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="the output_dir of a train run")
    evaluate.add_argument("--data", metavar="FILE", help="evaluate on this file instead (same columns as the recipe)")
    evaluate.set_defaults(func=cmd_evaluate)

    from peftkit.push import add_push_parser

    add_push_parser(sub)
    return parser


def add_recipe_arguments(parser: argparse.ArgumentParser, optional: bool) -> None:
    parser.add_argument("recipe", metavar="RECIPE", nargs="?" if optional else None,
                        help="recipe YAML file" + (" (default: the built-in SST-2 quickstart)" if optional else ""))
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
    from peftkit.train import run

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
    from peftkit.validate import check_recipe_inputs

    recipe = load_recipe(args.recipe, args.overrides)
    print(check_recipe_inputs(recipe))
    return 0


def cmd_evaluate(args) -> int:
    from peftkit.evaluate import evaluate_run

    evaluate_run(args.run_dir, args.data)
    return 0
