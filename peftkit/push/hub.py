"""`peftkit push`: upload a run's adapter (or merged model) with its model card to the Hugging Face Hub.

The upload folder is assembled completely on disk first (RUN_DIR/push_staging/), so what is pushed can
be inspected with --dry-run and is exactly what the hub receives, in one commit. The token is resolved
by huggingface_hub (HF_TOKEN, then the stored login) and lives only in memory: it is never written to
the staging folder, the card or the run folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml
from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError

from peftkit import __version__
from peftkit.errors import PeftkitError
from peftkit.runs.layout import ADAPTER_CONFIG_FILE, ADAPTER_DIR, LABEL_MAP_FILE, MERGED_DIR, METRICS_FILE, RECIPE_FILE
from peftkit.runs.read import load_run_record

STAGING_DIRNAME = "push_staging"
DEFAULT_ENDPOINT = "https://huggingface.co"

# Files of the source folder that the staging replaces: peft writes a placeholder README.md.
REPLACED_FILES = frozenset({"README.md"})

# Errors of the HTTP client that huggingface_hub uses (httpx2 in 2.x), found through its own error class
# so that a refused connection or a timeout becomes a clear message whatever the client is.
NETWORK_ERRORS = (*HfHubHTTPError.__bases__, OSError)


@dataclass(frozen=True)
class PushPlan:
    """What a push will do; printed by --dry-run and before a real upload."""

    repo_id: str
    endpoint: str
    revision: str | None
    private: bool
    merged: bool
    base_model_id: str
    base_model_source: str
    commit_message: str
    staging_dir: Path

    def describe(self) -> str:
        files = sorted(p for p in self.staging_dir.rglob("*") if p.is_file())
        total = sum(p.stat().st_size for p in files)
        lines = [
            f"repo:           {self.endpoint}/{self.repo_id} (revision {self.revision or 'main'}, "
            f"{'private' if self.private else 'visibility: hub default for new repos'})",
            f"upload:         {'merged model' if self.merged else 'LoRA adapter'}",
            f"base model:     {self.base_model_id} (from {self.base_model_source})",
            f"commit message: {self.commit_message}",
            f"staged folder:  {self.staging_dir} ({len(files)} files, {_human_size(total)})",
            *[f"  {p.relative_to(self.staging_dir).as_posix():<40} {_human_size(p.stat().st_size):>10}" for p in files],
        ]
        return "\n".join(lines)


def push_run(
    run_dir: str | Path,
    repo_id: str,
    *,
    merged: bool = False,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    base_model_id: str | None = None,
    commit_message: str | None = None,
    endpoint: str | None = None,
) -> Path:
    """Stage RUN_DIR for the hub and (unless dry_run) upload it to `repo_id` in one commit.

    Returns the staging folder, which is kept after the push as the record of what was uploaded.
    `endpoint` defaults to $HF_ENDPOINT, then https://huggingface.co.
    """
    # lazily, here and below: card imports torch, and `peftkit CMD --help` must not
    from peftkit.push.card import resolve_base_hub_id

    run_dir = Path(run_dir)
    _validate_repo_id(repo_id)
    run = load_run_record(run_dir)
    source_dir = _source_dir(run_dir, merged=merged)
    _check_sources(run_dir, source_dir, merged=merged)
    base_id, base_source = resolve_base_hub_id(run, base_model_id)
    staging = _stage(run_dir, source_dir, merged=merged, repo_id=repo_id, base_id=base_id)
    plan = PushPlan(
        repo_id=repo_id,
        endpoint=(endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
        revision=revision,
        private=private,
        merged=merged,
        base_model_id=base_id,
        base_model_source=base_source,
        commit_message=commit_message or _default_commit_message(run_dir, run.metrics, merged=merged),
        staging_dir=staging,
    )
    print(plan.describe())
    if dry_run:
        print("dry run: nothing was sent to the hub.")
        return staging
    print(f"pushed: {_upload(plan)}")
    return staging


def _validate_repo_id(repo_id: str) -> None:
    """Require ORG/NAME: a bare name would land in whichever namespace the token belongs to."""
    from peftkit.push.card import looks_like_hub_id  # lazily: it imports torch

    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not looks_like_hub_id(repo_id):
        raise PeftkitError(
            f"--repo-id {repo_id!r} is not a hub repo id of the form ORG/NAME "
            "(letters, digits, '-', '_', '.'; e.g. my-user/smollm2-sentiment-lora)"
        )


def _source_dir(run_dir: Path, *, merged: bool) -> Path:
    """The folder whose files are uploaded: merged/ for --merged, adapter/ otherwise."""
    if merged:
        source = run_dir / MERGED_DIR
        if not (source / "config.json").is_file():
            raise PeftkitError(
                f"--merged needs a merged model in {source}, which does not exist or has no config.json; "
                f"run `peftkit merge {run_dir}` first"
            )
        return source
    source = run_dir / ADAPTER_DIR
    if not (source / ADAPTER_CONFIG_FILE).is_file():
        raise PeftkitError(f"{source}/{ADAPTER_CONFIG_FILE} is missing; the run did not save an adapter")
    return source


def _check_sources(run_dir: Path, source_dir: Path, *, merged: bool) -> None:
    """Every weight file and JSON file to be staged must load (a truncated, empty or garbage adapter is not "ready
    to upload"), and the label map must be a label map: checked before anything is staged or sent."""
    from peftkit.core.integrity import check_folder_files, read_json_object
    from peftkit.runs.read import DAMAGED_RUN_ADVICE, check_run_files

    check_run_files(run_dir, adapter=not merged)
    if merged:
        advice = f"; run `peftkit merge {run_dir}` again"
        check_folder_files(source_dir, advice)
        read_json_object(source_dir / "config.json", advice)
        if not any(source_dir.glob("*.safetensors")):
            raise PeftkitError(f"{source_dir} has no safetensors weights{advice}")
    else:
        read_json_object(source_dir / ADAPTER_CONFIG_FILE, DAMAGED_RUN_ADVICE)


def _stage(run_dir: Path, source_dir: Path, *, merged: bool, repo_id: str, base_id: str) -> Path:
    """Build the upload folder in a temporary sibling, then swap it in as RUN_DIR/push_staging.

    A failure part-way leaves the previous staging folder (or none), never a half-built one.
    """
    final = run_dir / STAGING_DIRNAME
    tmp = Path(tempfile.mkdtemp(prefix=f".{STAGING_DIRNAME}-", dir=run_dir))
    try:
        _fill_staging(tmp, run_dir, source_dir, merged=merged, repo_id=repo_id, base_id=base_id)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = run_dir / f".{STAGING_DIRNAME}-old-{uuid.uuid4().hex}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _fill_staging(staging: Path, run_dir: Path, source_dir: Path, *, merged: bool, repo_id: str, base_id: str) -> None:
    """Write the exact set of files to upload into `staging`."""
    from peftkit.push.card import build_model_card  # lazily: it imports torch

    for src in sorted(source_dir.iterdir()):
        if src.is_file() and src.name not in REPLACED_FILES:
            _link_or_copy(src, staging / src.name)
    if not merged:
        _rewrite_base_model(staging / ADAPTER_CONFIG_FILE, base_id)
    if (run_dir / LABEL_MAP_FILE).is_file():  # sft and multitask runs have none (multitask: labels in recipe.yaml)
        _link_or_copy(run_dir / LABEL_MAP_FILE, staging / LABEL_MAP_FILE)
    _link_or_copy(run_dir / METRICS_FILE, staging / METRICS_FILE)
    _stage_recipe(run_dir / RECIPE_FILE, staging / RECIPE_FILE)
    card = build_model_card(run_dir, merged=merged, repo_id=repo_id, base_model_id=base_id)
    (staging / "README.md").write_text(str(card), encoding="utf-8")


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link when possible: merged weights can be gigabytes and staging must not double the disk use."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _rewrite_base_model(config_path: Path, base_id: str) -> None:
    """Point the adapter at the hub base model instead of the local path it was trained from (peft#2124).

    The file is rewritten, not edited in place, so the hard-linked original in RUN_DIR/adapter is untouched.
    """
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_id
    config_path.unlink()
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _stage_recipe(src: Path, dst: Path) -> None:
    """Copy recipe.yaml, dropping credential keys (e.g. train.hub_token) if the user put any there."""
    from peftkit.push.card import public_recipe  # lazily: it imports torch

    recipe, dropped = public_recipe(yaml.safe_load(src.read_text(encoding="utf-8")))
    if not dropped:
        _link_or_copy(src, dst)
        return
    print(f"note: not uploading credential keys from recipe.yaml: {', '.join(dropped)}")
    dst.write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), encoding="utf-8")


def _default_commit_message(run_dir: Path, metrics: dict, *, merged: bool) -> str:
    kind = "merged model" if merged else "LoRA adapter"
    accuracy = metrics.get("accuracy")
    measured = f", eval accuracy {accuracy:.4f}" if isinstance(accuracy, (int, float)) else ""
    return f"peftkit: upload {kind} from run {run_dir.resolve().name}{measured}"


def _upload(plan: PushPlan) -> str:
    """Create the repo (and branch), then commit the staged files in a single commit; return its URL.

    create_commit rather than upload_folder: with hf_xet installed (a huggingface_hub 2.x dependency),
    upload_folder goes through a streamed pipeline that may split a folder into several commits
    ("... (part 2)") and retries commit requests; create_commit is exactly one commit.
    """
    token = _resolve_token()
    _assert_token_not_staged(plan.staging_dir, token)
    api = HfApi(endpoint=plan.endpoint, token=token, library_name="peftkit", library_version=__version__)
    try:
        api.create_repo(plan.repo_id, private=True if plan.private else None, exist_ok=True)
        if plan.private and not api.model_info(plan.repo_id).private:
            raise PeftkitError(
                f"{plan.repo_id} already exists and is public; --private does not change an existing repo. "
                "Make it private on the hub first, or push to a new repo id"
            )
        if plan.revision not in (None, "main"):
            api.create_branch(plan.repo_id, branch=plan.revision, exist_ok=True)
        commit = api.create_commit(
            plan.repo_id,
            operations=_operations(plan.staging_dir),
            commit_message=plan.commit_message,
            revision=plan.revision,
        )
    except HfHubHTTPError as exc:
        raise PeftkitError(_describe_hub_error(plan, exc)) from exc
    except NETWORK_ERRORS as exc:
        raise PeftkitError(f"could not reach {plan.endpoint}: {exc}") from exc
    except ValueError as exc:
        # create_commit reports the hub's README.md metadata check (/api/validate-yaml) as a ValueError.
        if "Invalid metadata in README.md" not in str(exc):
            raise
        raise PeftkitError(f"the hub rejected the model card: {exc}") from exc
    return commit.commit_url


def _resolve_token() -> str:
    """The token huggingface_hub would use (HF_TOKEN, then the stored login); fail before any request."""
    if constants.is_offline_mode():
        raise PeftkitError("HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it, or use --dry-run")
    token = get_token()
    if not token:
        raise PeftkitError("no Hugging Face token found: set HF_TOKEN or run `hf auth login`, then retry")
    return token


def _assert_token_not_staged(staging: Path, token: str) -> None:
    """Refuse to upload a file that contains the token (e.g. pasted into a tokenizer or config file)."""
    needle = token.encode()
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        if needle in path.read_bytes():
            raise PeftkitError(
                f"{path.relative_to(staging)} in the staged upload contains your Hugging Face token; "
                "remove it from the run folder before pushing"
            )


def _operations(staging: Path) -> list[CommitOperationAdd]:
    """One add operation per staged file: the commit holds exactly the staging folder."""
    return [
        CommitOperationAdd(path_in_repo=path.relative_to(staging).as_posix(), path_or_fileobj=str(path))
        for path in sorted(p for p in staging.rglob("*") if p.is_file())
    ]


def _describe_hub_error(plan: PushPlan, exc: HfHubHTTPError) -> str:
    status = exc.response.status_code if exc.response is not None else None
    if status in (401, 403):
        return (
            f"the hub refused the token ({status}) for {plan.repo_id}: check that HF_TOKEN or your "
            f"`hf auth login` token has write access to the {plan.repo_id.split('/')[0]} namespace"
        )
    return f"the hub returned an error while pushing to {plan.repo_id}: {exc}"


def _human_size(n: float) -> str:
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"
