"""The `peftkit sweep` parser and the function it runs (nothing heavy is imported until the command runs)."""

from __future__ import annotations

from peftkit.recipe.arguments import add_recipe_arguments


def add_parser(subparsers) -> None:
    sweep = subparsers.add_parser(
        "sweep", help="search a recipe's hyperparameters (its sweep: section) with Optuna",
        description="Run the trials of the recipe's sweep: section (Optuna TPE, median pruning), each a normal run "
                    "in OUTPUT_DIR/trials/trial-N chosen on a validation split carved from the training rows; then "
                    "write trials.csv/.md, sweep.png and best_recipe.yaml. Run the same command again to resume.")
    add_recipe_arguments(sweep, optional=False)
    sweep.add_argument("--worker-index", type=int, metavar="K",
                       help="run as worker K only (another machine: with sweep.storage=URL shared by every worker)")
    sweep.add_argument("--report-only", action="store_true", help="write the table, plot and best recipe; no trials")
    sweep.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    from peftkit.sweep.driver import sweep_command

    return sweep_command(args.recipe, list(args.overrides), worker_index=args.worker_index,
                         report_only=args.report_only)
