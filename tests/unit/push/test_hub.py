"""`peftkit push` against a local hub stand-in: staging, one commit, base id rewrite, token hygiene."""

from __future__ import annotations

import argparse
import json
import shutil
import socket
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard, constants

from peftkit.errors import PeftkitError
from peftkit.push.command import add_parser as add_push_parser
from peftkit.push.hub import STAGING_DIRNAME, push_run
from tests.helpers.fake_run import BASE_HUB_ID, METRICS, build_run, write_merged
from tests.helpers.hub_stub import HubStub

PLANTED_TOKEN = "hf_PLANTEDtokenXXXXXXXXXXXXXXXXXXXXXXXX"
REPO_ID = "someone/smollm2-sentiment-lora"


@pytest.fixture(scope="module")
def template_run(tmp_path_factory) -> Path:
    return build_run(tmp_path_factory.mktemp("template"))


@pytest.fixture
def run_dir(template_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template_run, tmp_path / "run"))


@pytest.fixture(autouse=True)
def hub_env(monkeypatch, tmp_path):
    """Token only from HF_TOKEN (no stored login, no OIDC); online mode; no telemetry lookup of huggingface.co."""
    monkeypatch.setenv("HF_TOKEN", PLANTED_TOKEN)
    for var in ("HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # Building request headers would otherwise GET https://huggingface.co/api/agent-harnesses once per process.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)


@pytest.fixture
def hub():
    with HubStub() as stub:
        yield stub


def _staged_files(staging: Path) -> dict[str, bytes]:
    return {p.relative_to(staging).as_posix(): p.read_bytes() for p in staging.rglob("*") if p.is_file()}


def _only_commit(hub: HubStub):
    assert len(hub.state.commits) == 1, [c.summary for c in hub.state.commits]
    return hub.state.commits[0]


def test_push_uploads_exactly_the_staged_files_in_one_commit(run_dir, hub):
    staging = push_run(run_dir, REPO_ID, endpoint=hub.endpoint)
    commit = _only_commit(hub)
    assert staging == run_dir / STAGING_DIRNAME
    assert commit.repo_id == REPO_ID and commit.revision == "main"
    assert commit.files == _staged_files(staging)
    adapter_files = {p.name for p in (run_dir / "adapter").iterdir()} - {"README.md"}
    assert set(commit.files) == adapter_files | {"README.md", "label_map.json", "recipe.yaml", "metrics.json"}
    assert {"adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(commit.files)
    assert commit.files["adapter_model.safetensors"] == (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    assert commit.summary.startswith("peftkit: upload LoRA adapter from run run")
    assert REPO_ID in hub.state.repos


def test_uploaded_adapter_config_points_at_the_hub_base(run_dir, hub):
    push_run(run_dir, REPO_ID, endpoint=hub.endpoint)
    uploaded = json.loads(_only_commit(hub).files["adapter_config.json"])
    assert uploaded["base_model_name_or_path"] == BASE_HUB_ID
    local = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert Path(local["base_model_name_or_path"]).is_dir()  # the run's own adapter is left as trained
    assert {k: v for k, v in uploaded.items() if k != "base_model_name_or_path"} == {
        k: v for k, v in local.items() if k != "base_model_name_or_path"
    }


def test_uploaded_card_carries_the_measured_metrics(run_dir, hub):
    push_run(run_dir, REPO_ID, endpoint=hub.endpoint)
    card = ModelCard(_only_commit(hub).files["README.md"].decode())
    assert card.data.library_name == "peft" and card.data.base_model == BASE_HUB_ID
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "accuracy": METRICS["accuracy"],
        "f1": METRICS["macro_f1"],
        "precision": METRICS["macro_precision"],
        "recall": METRICS["macro_recall"],
    }
    assert json.loads(_only_commit(hub).files["metrics.json"]) == METRICS


def test_token_reaches_the_hub_but_no_file(run_dir, hub):
    push_run(run_dir, REPO_ID, endpoint=hub.endpoint)
    assert hub.state.requests, "no request reached the stub"
    assert {r.authorization for r in hub.state.requests if r.path != "/api/validate-yaml"} == {
        f"Bearer {PLANTED_TOKEN}"
    }
    leaked = [p for p in run_dir.rglob("*") if p.is_file() and PLANTED_TOKEN.encode() in p.read_bytes()]
    assert leaked == []
    assert not any(PLANTED_TOKEN.encode() in content for content in _only_commit(hub).files.values())


def test_dry_run_stages_but_sends_nothing(run_dir, hub, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("network access during --dry-run")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    staging = push_run(run_dir, REPO_ID, dry_run=True, endpoint=hub.endpoint)
    assert hub.state.requests == []
    staged = _staged_files(staging)
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "recipe.yaml"} <= set(staged)
    assert json.loads(staged["adapter_config.json"])["base_model_name_or_path"] == BASE_HUB_ID
    out = capsys.readouterr().out
    assert REPO_ID in out and "dry run: nothing was sent" in out
    assert "adapter_model.safetensors" in out and "commit message: peftkit: upload LoRA adapter" in out


def test_restaging_replaces_the_previous_folder_atomically(run_dir):
    push_run(run_dir, REPO_ID, dry_run=True)
    (run_dir / STAGING_DIRNAME / "stale.txt").write_text("from an earlier push")
    push_run(run_dir, REPO_ID, dry_run=True, commit_message="second")
    assert not (run_dir / STAGING_DIRNAME / "stale.txt").exists()
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".")] == []  # no temp leftovers


def test_merged_push_uploads_the_merged_model(run_dir, hub):
    write_merged(run_dir)
    push_run(run_dir, REPO_ID, merged=True, endpoint=hub.endpoint)
    files = _only_commit(hub).files
    assert {"config.json", "model.safetensors", "label_map.json", "README.md", "recipe.yaml"} <= set(files)
    assert "adapter_config.json" not in files
    assert ModelCard(files["README.md"].decode()).data.library_name == "transformers"


def test_merged_without_merge_says_to_run_merge(run_dir, hub):
    with pytest.raises(PeftkitError, match=rf"peftkit merge {run_dir}"):
        push_run(run_dir, REPO_ID, merged=True, endpoint=hub.endpoint)
    assert hub.state.requests == []
    assert not (run_dir / STAGING_DIRNAME).exists()


@pytest.mark.parametrize("bad", ["no-namespace", "a/b/c", "some one/model", "someone/bad--name", "someone/", ""])
def test_bad_repo_id_fails_before_any_work(run_dir, hub, bad):
    with pytest.raises(PeftkitError, match="ORG/NAME"):
        push_run(run_dir, bad, endpoint=hub.endpoint)
    assert hub.state.requests == []
    assert not (run_dir / STAGING_DIRNAME).exists()


def test_run_folder_without_required_files(run_dir, hub):
    (run_dir / "train_summary.json").unlink()
    with pytest.raises(PeftkitError, match="missing train_summary.json"):
        push_run(run_dir, REPO_ID, endpoint=hub.endpoint)


def test_unknown_base_model_needs_base_model_id(run_dir, hub):
    summary = json.loads((run_dir / "train_summary.json").read_text())
    summary["base_model_hub_id"] = None
    (run_dir / "train_summary.json").write_text(json.dumps(summary))
    with pytest.raises(PeftkitError, match="--base-model-id"):
        push_run(run_dir, REPO_ID, endpoint=hub.endpoint)
    assert hub.state.requests == []
    push_run(run_dir, REPO_ID, endpoint=hub.endpoint, base_model_id="someone/base")
    uploaded = json.loads(_only_commit(hub).files["adapter_config.json"])
    assert uploaded["base_model_name_or_path"] == "someone/base"


def test_revision_creates_the_branch_and_commits_there(run_dir, hub):
    push_run(run_dir, REPO_ID, revision="exp-1", endpoint=hub.endpoint)
    assert "exp-1" in hub.state.repos[REPO_ID]["branches"]
    assert _only_commit(hub).revision == "exp-1"


def test_private_creates_a_private_repo(run_dir, hub):
    push_run(run_dir, REPO_ID, private=True, endpoint=hub.endpoint)
    assert hub.state.repos[REPO_ID]["private"] is True


def test_private_refuses_an_existing_public_repo(run_dir, hub):
    hub.state.repos[REPO_ID] = {"private": False, "branches": {"main"}}
    with pytest.raises(PeftkitError, match="already exists and is public"):
        push_run(run_dir, REPO_ID, private=True, endpoint=hub.endpoint)
    assert hub.state.commits == []


def test_rejected_token_is_a_clear_error_without_the_token(run_dir):
    with HubStub(expected_token="hf_someoneElsesToken") as hub:
        with pytest.raises(PeftkitError, match="refused the token") as err:
            push_run(run_dir, REPO_ID, endpoint=hub.endpoint)
    assert PLANTED_TOKEN not in str(err.value)
    assert hub.state.commits == []


def test_card_rejected_by_the_hub_is_a_clear_error(run_dir):
    with HubStub(card_error='"base_model" must be a valid model id') as hub:
        with pytest.raises(PeftkitError, match=r"(?s)rejected the model card.*base_model"):
            push_run(run_dir, REPO_ID, endpoint=hub.endpoint)
    assert hub.state.commits == []


def test_no_token_fails_before_any_request(run_dir, hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(PeftkitError, match="HF_TOKEN"):
        push_run(run_dir, REPO_ID, endpoint=hub.endpoint)
    assert hub.state.requests == []


def test_offline_mode_fails_clearly(run_dir, hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PeftkitError, match="HF_HUB_OFFLINE"):
        push_run(run_dir, REPO_ID, endpoint=hub.endpoint)
    assert hub.state.requests == []


def test_unreachable_hub_is_a_clear_error(run_dir):
    with HubStub() as hub:
        endpoint = hub.endpoint  # a port that nothing listens on once the stub is stopped
    with pytest.raises(PeftkitError, match=f"could not reach {endpoint}"):
        push_run(run_dir, REPO_ID, endpoint=endpoint)


def test_credentials_in_recipe_are_not_uploaded(run_dir, hub):
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    recipe["train"]["hub_token"] = "hf_INRECIPEyyyyyyyyyyyyyyyyyyyyyyyyyyy"
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    push_run(run_dir, REPO_ID, endpoint=hub.endpoint)
    files = _only_commit(hub).files
    uploaded_recipe = yaml.safe_load(files["recipe.yaml"])
    assert "hub_token" not in uploaded_recipe["train"]
    assert uploaded_recipe["train"]["learning_rate"] == recipe["train"]["learning_rate"]
    assert not any(b"hf_INRECIPE" in content for content in files.values())


def test_token_pasted_into_a_run_file_blocks_the_upload(run_dir, hub):
    config_path = run_dir / "adapter" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["note"] = PLANTED_TOKEN
    config_path.write_text(json.dumps(config))
    with pytest.raises(PeftkitError, match="tokenizer_config.json .* contains your Hugging Face token"):
        push_run(run_dir, REPO_ID, endpoint=hub.endpoint)
    assert hub.state.requests == []


def test_endpoint_comes_from_hf_endpoint(run_dir, hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    push_run(run_dir, REPO_ID)
    assert _only_commit(hub).repo_id == REPO_ID


def test_cli_push_dry_run(run_dir, hub, capsys):
    parser = argparse.ArgumentParser(prog="peftkit")
    add_push_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["push", str(run_dir), "--repo-id", REPO_ID, "--dry-run", "--endpoint", hub.endpoint, "--commit-message", "m1"]
    )
    assert args.func(args) == 0
    assert hub.state.requests == []
    assert "commit message: m1" in capsys.readouterr().out
