"""`peftkit auto --budget 60s` for real, on two tiny random backbones (a BERT encoder: a head; a Llama: generative
and a head): killed with SIGKILL in the middle of a trial, resumed with the same command, it finishes within its
budget and leaves the leaderboard, the best recipe and the winner's run folder, evaluated once on the eval file."""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from tests.conftest import REPO, SST2, minilm_tokenizer_dir  # noqa: E402

BUDGET_S = 60
TOLERANCE_S = 60  # "kept to within a minute"


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A tiny random BERT encoder (BertModel weights: a head is added by the classification task)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_tokenizer_dir())
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=128)).save_pretrained(folder)
    return folder


def sst2_rows(path: Path, source: str, rows: int) -> Path:
    lines = (SST2 / source).read_text(encoding="utf-8").splitlines()[: rows + 1]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def trials_in(db: Path) -> list[tuple[int, str]]:
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("select number, state from trials order by number").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []


def wait_for_a_trial_in_flight(db: Path, out: Path, proc, after: int, timeout: float = 120) -> int:
    """The number of a running trial (numbered `after` or later) that has saved a checkpoint."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for number, state in trials_in(db):
            if number >= after and state == "RUNNING" and list((out / "trials" / f"trial-{number}" / "checkpoints")
                                                                .glob("checkpoint-*")):
                return number
        time.sleep(0.2)
    raise AssertionError(f"no trial >= {after} in flight (process exit {proc.poll()}); trials {trials_in(db)}")


def test_auto_within_budget_killed_and_resumed(tmp_path, tiny_llama_dir, tiny_bert_dir):
    import optuna

    train = sst2_rows(tmp_path / "train.tsv", "train.tsv", 100)
    dev = sst2_rows(tmp_path / "dev.tsv", "dev.tsv", 48)
    out = tmp_path / "auto-out"
    command = [sys.executable, "-m", "peftkit", "auto", str(train), "--eval", str(dev), "--budget", f"{BUDGET_S}s",
               "--models", f"{tiny_bert_dir},{tiny_llama_dir}", "--out", str(out),
               # shorter trials on this shared 2-core machine: stop at the first evaluation without improvement
               "selection.early_stopping_patience=1", "data.max_length=32"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    first_log = tmp_path / "first.log"
    started = time.time()
    with first_log.open("w") as log:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            killed = wait_for_a_trial_in_flight(out / "auto.db", out, proc, after=2)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    first_session_s = time.time() - started
    assert not (out / "leaderboard.md").exists(), "the kill must come before the end"
    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    wall_s = time.time() - started
    first = first_log.read_text()
    assert resumed.returncode == 0, first[-2000:] + resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"trial(s) {killed} of the killed session run again first" in resumed.stdout

    study = optuna.load_study(study_name="auto", storage=f"sqlite:///{out / 'auto.db'}")
    spent = study.user_attrs["spent_s"]
    print(f"\nauto --budget {BUDGET_S}s, killed in trial {killed} and resumed: wall {wall_s:.1f} s "
          f"(both processes, start-up included), budget ledger {spent:.1f} s")
    assert spent <= BUDGET_S + 5 and wall_s <= BUDGET_S + TOLERANCE_S
    # the ledger is written every few seconds and at each trial's end, so the killed session's last entry lies
    # between 0 (nothing recorded: the resume started the clock again) and the time it really ran
    before = study.user_attrs["spent_before_session"]
    assert 0 < before <= first_session_s, f"the resumed session continued the killed one's clock ({before} s)"

    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    by_number = {int(r["trial"]): r for r in rows}
    assert by_number[killed]["state"] == "fail" and any(r["retry_of"] == str(killed) for r in rows)
    finished = [r for r in rows if r["state"] in ("complete", "pruned")]
    assert {r["model"] for r in finished} == {str(tiny_bert_dir), str(tiny_llama_dir)}
    assert {r["method"] for r in finished} == {"classification", "generative_classification"}
    assert any(r["state"] == "pruned" for r in rows) and any(r["state"] == "complete" for r in rows)
    assert sum(r["init_recipe"] == "True" for r in rows) >= 3, "each arm's first trial is its init recipe"
    # one console line per finished trial (the killed one never finished)
    lines = [line for line in (first + resumed.stdout).splitlines() if line.startswith("auto [")]
    assert len(lines) == len(finished), lines
    assert [line for line in resumed.stdout.splitlines() if line.startswith("auto [")], "the resume ran trials"

    from peftkit.recipe import load_recipe

    best = load_recipe(out / "best_recipe.yaml")
    assert best.output_dir == str(out / "best") and best.data.eval_file == str(dev) and best.evaluate.enabled
    winner = (out / "winner").resolve()
    assert (winner / "adapter" / "adapter_model.safetensors").is_file()
    assert list(winner.glob("eval-dev-*/metrics.json")), "the winner was evaluated on the eval file"
    assert not [p for p in (out / "trials").glob("*/eval-*") if p.parent != winner], "only the winner saw it"
    board = (out / "leaderboard.md").read_text()
    assert f"Evaluated once on {dev}" in board and f"run folder `{out / 'trials' / winner.name}`" in board
    assert (out / "leaderboard.png").stat().st_size > 10_000
