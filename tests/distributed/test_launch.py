"""Real 2-process launches on CPU through the repository's accelerate configs.

Each launch trains tests/distributed/tiny_ddp_train.py with 2 ranks x per-device batch 2 x gradient
accumulation 2 (global batch 8) and is compared with a 1-process run with batch 8 from the same base weights.

Tolerances. The runs see the same 8 rows per step and start from the same weights; what differs is only the
float32 summation order (gradients reduced over ranks and micro-batches instead of one batch). Measured over 4
Adam steps at lr 1e-2: losses within 6e-8 (2.4e-7 with DeepSpeed's CPUAdam), trainable weights within 2.7e-6
(they are ~0.2 and move ~1e-2 per step). LOSS_ATOL and WEIGHT_ATOL leave 40-100x headroom over that noise and
stay 2-3 orders of magnitude below what a real fault produces: a rank training on the wrong rows or from other
weights moved losses by 2e-2 to 6e-2, and the loss-scaling fault (disable_token_count_loss_scaling) doubles them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.distributed import tiny_ddp_train

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(tiny_ddp_train.__file__)
CONFIGS = REPO / "accelerate_configs"
MAX_STEPS = 4
PER_DEVICE_BATCH = 2
GRAD_ACCUM = 2
GLOBAL_BATCH = 2 * PER_DEVICE_BATCH * GRAD_ACCUM
LOSS_ATOL = 1e-5
WEIGHT_ATOL = 1e-4
LAUNCH_TIMEOUT_S = 300
# Variables of an enclosing launch (pytest itself run under torchrun, say) must not leak into the children.
_LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _child_env() -> dict[str, str]:
    """The test's environment without launch variables, and without GPUs: these tests prove the CPU path."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith("ACCELERATE_")}
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, env=_child_env(), capture_output=True, text=True,
                          timeout=LAUNCH_TIMEOUT_S)


def _train_args(base: Path, out: Path, *extra: str) -> list[str]:
    return [str(SCRIPT), "--base", str(base), "--out", str(out), "--max-steps", str(MAX_STEPS), *extra]


def _accelerate_launch(config: str, *script_and_args: str) -> subprocess.CompletedProcess:
    """``accelerate launch`` from this interpreter, as a user runs it."""
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    return _run([*launch, "--config_file", str(CONFIGS / config), *script_and_args])


def _reports(out: Path, ranks: int) -> list[dict]:
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(ranks)]


def _consumed_steps(report: dict, micro_batches_per_step: int) -> list[set[int]]:
    """Rows per optimizer step (the dataloader prefetches one batch beyond the last step: not consumed)."""
    batches = report["batches"]
    return [
        {i for batch in batches[step * micro_batches_per_step:(step + 1) * micro_batches_per_step] for i in batch}
        for step in range(MAX_STEPS)
    ]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-cls-base")
    tiny_ddp_train.save_base_model(path)
    return path


@pytest.fixture(scope="module")
def reference(base_model, tmp_path_factory) -> Path:
    """One process, batch 8: what every 2-process run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    result = _run([sys.executable, *_train_args(base_model, out, "--per-device-batch", str(GLOBAL_BATCH))])
    assert result.returncode == 0, result.stderr[-4000:]
    return out


# ZeRO-3 with CPU offload is `slow`: DeepSpeed's cpu_adam op compiles on first use (~60 s on this CPU).
@pytest.mark.parametrize("config", [
    "cpu_2proc.yaml",
    "deepspeed_zero2.yaml",
    "deepspeed_zero3.yaml",
    pytest.param("deepspeed_zero3_offload.yaml", marks=pytest.mark.slow),
])
def test_two_ranks_share_the_work_and_match_one_process(config, base_model, reference, tmp_path):
    out = tmp_path / "run"
    result = _accelerate_launch(config, *_train_args(base_model, out, "--per-device-batch", str(PER_DEVICE_BATCH),
                                                     "--grad-accum", str(GRAD_ACCUM)))
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = _reports(out, 2)
    (ref,) = _reports(reference, 1)

    for report in ranks:
        assert (report["launched_world_size"], report["trainer_world_size"], report["dist_world_size"]) == (2, 2, 2)
        assert report["use_cpu"] is True

    steps = [_consumed_steps(report, GRAD_ACCUM) for report in ranks]
    ref_steps = _consumed_steps(ref, 1)
    for step in range(MAX_STEPS):
        assert not steps[0][step] & steps[1][step], f"step {step}: both ranks trained on the same rows"
        assert steps[0][step] | steps[1][step] == ref_steps[step], f"step {step}: not the 1-process batch"

    assert ranks[0]["trainable_hash"] == ranks[1]["trainable_hash"], "ranks ended with different adapters"
    assert ranks[0]["losses"] == pytest.approx(ref["losses"], abs=LOSS_ATOL)
    weights, ref_weights = load_file(out / "adapter.safetensors"), load_file(reference / "adapter.safetensors")
    assert weights.keys() == ref_weights.keys()
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, ref_weights[name], atol=WEIGHT_ATOL, rtol=0, msg=name)

    full = ref["base_weight_local_numel"]
    sharded = config.startswith("deepspeed_zero3")
    assert [r["base_weight_local_numel"] for r in ranks] == ([full // 2] * 2 if sharded else [full] * 2)


def test_cpu_flag_with_two_processes_is_refused(base_model, tmp_path):
    """`accelerate launch --cpu --num_processes 2` starts one process; check_launch must stop it."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    result = _run([*launch, *_train_args(base_model, tmp_path)])
    assert result.returncode != 0
    assert "starts only ONE process" in result.stderr
    assert not list(tmp_path.glob("rank*.json"))


def test_deepspeed_without_use_cpu_is_refused(base_model, tmp_path):
    """Without use_cpu=True each DeepSpeed rank silently gets world size 1; check_launch must stop it."""
    result = _accelerate_launch("deepspeed_zero2.yaml", *_train_args(base_model, tmp_path, "--raw-args"))
    assert result.returncode != 0
    assert "but this process trains with world size 1" in result.stderr
    assert not list(tmp_path.glob("rank*.json"))
