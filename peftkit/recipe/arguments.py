"""The command-line arguments that name a recipe: ``RECIPE [section.key=value ...]``, shared by every command
that reads one (train, validate, sweep, augment). argparse only: nothing is read until the command runs."""

from __future__ import annotations

import argparse
import os

DEFAULT_RECIPE = "sst2_quickstart.yaml"
"""The built-in quickstart recipe (peftkit/defaults), used when `peftkit train` names none."""


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
