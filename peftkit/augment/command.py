"""The `peftkit augment` parser and the function it runs (nothing heavy is imported until the command runs)."""

from __future__ import annotations

from peftkit.recipe.arguments import add_recipe_arguments


def add_parser(subparsers) -> None:
    augment = subparsers.add_parser(
        "augment", help="write an augmented copy of a recipe's training file (its augment: section)",
        description="Write the recipe's training rows plus new ones (augment.methods: edit, paraphrase) beside "
                    "data.train_file, with a source column; new rows equal to a training row or an eval sentence "
                    "are dropped, and with augment.teacher so are rows the teacher doubts. Counts per method go to "
                    "FILE.report.json.")
    add_recipe_arguments(augment, optional=False)
    augment.add_argument("--out", metavar="FILE", help="the augmented file (default: TRAIN.augmented.EXT)")
    augment.set_defaults(func=cmd_augment)


def cmd_augment(args) -> int:
    from peftkit.augment.rows import augment_command

    augment_command(args.recipe, list(args.overrides), args.out)
    return 0
