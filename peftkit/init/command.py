"""The `peftkit init` parser and the function it runs (nothing heavy is imported until the command runs)."""

from __future__ import annotations

from peftkit.recipe.task_traits import tasks_where


def add_parser(subparsers) -> None:
    init = subparsers.add_parser(
        "init", help="write a commented recipe for your own labelled data file",
        description="Inspect DATA_FILE (csv with any delimiter, tsv, jsonl, parquet; header or not), find its text "
                    "and label columns, count the labels, flag imbalance, choose a classification head (encoders) "
                    "or generative classification (causal LMs), and write a commented recipe that opens with its "
                    "command.")
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


def cmd_init(args) -> int:
    from peftkit.init.recipe_writer import init_recipe

    _, summary = init_recipe(args.data_file, eval_file=args.eval, model=args.model, task=args.task, out=args.out,
                             text_column=args.text_column, label_column=args.label_column, header=args.header,
                             output_dir=args.output_dir, force=args.force)
    print(summary)
    return 0
