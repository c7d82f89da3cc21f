"""The `peftkit push` parser and the function it runs (nothing heavy is imported until the command runs:
building the model card imports the task modules, hence torch)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `peftkit push` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "push",
        help="upload a run's adapter (or merged model) with a model card to the Hugging Face Hub",
        description=(
            "Stage RUN_DIR/push_staging (adapter or merged model, tokenizer, label_map.json, recipe.yaml, "
            "metrics.json, README.md model card) and upload it in one commit. The token comes from HF_TOKEN "
            "or `hf auth login`."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="output_dir of a `peftkit train` run")
    parser.add_argument("--repo-id", required=True, help="target model repo, ORG/NAME")
    parser.add_argument("--merged", action="store_true", help="push RUN_DIR/merged (from `peftkit merge`)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", help="branch to commit to (created if missing); default main")
    parser.add_argument("--dry-run", action="store_true", help="stage and show what would be uploaded; no network")
    parser.add_argument("--base-model-id", help="hub id of the base model, when the run does not record it")
    parser.add_argument("--commit-message", help="commit message (default names the run and its accuracy)")
    parser.add_argument("--endpoint", help="hub URL (default: $HF_ENDPOINT, else https://huggingface.co)")
    parser.set_defaults(func=cmd_push)
    return parser


def cmd_push(args: argparse.Namespace) -> int:
    """Run `peftkit push`; PeftkitError propagates to the CLI, which prints it and exits 2."""
    from peftkit.push.hub import push_run

    push_run(
        args.run_dir,
        args.repo_id,
        merged=args.merged,
        private=args.private,
        revision=args.revision,
        dry_run=args.dry_run,
        base_model_id=args.base_model_id,
        commit_message=args.commit_message,
        endpoint=args.endpoint,
    )
    return 0
