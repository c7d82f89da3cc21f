"""peftkit.trainer.launch in one process, with the launchers' environment variables faked."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from peftkit.core import launch as rank_env
from peftkit.errors import PeftkitError
from peftkit.trainer import launch as distributed

# Everything a launcher or accelerate may have set; each test starts from none of them.
LAUNCH_VARS = (
    "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PMI_SIZE", "PMI_RANK",
    "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK",
    "ACCELERATE_USE_CPU", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE",
    "ACCELERATE_DEEPSPEED_CONFIG_FILE",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def training_args(tmp_path, **kwargs):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(tmp_path), report_to=[], **kwargs)


def test_single_process_passes(tmp_path):
    distributed.check_launch(training_args(tmp_path))


def test_world_size_two_without_process_group_is_refused(clean_env, tmp_path):
    """WORLD_SIZE=2 but the Trainer builds no process group (use_cpu=False on a CPU machine): world size 1."""
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("RANK", "0")
    with pytest.raises(PeftkitError, match="world size 1") as caught:
        distributed.check_launch(training_args(tmp_path))
    if not torch.cuda.is_available():
        assert "use_cpu=True" in str(caught.value)


def test_accelerate_cpu_trap_is_refused(clean_env, tmp_path):
    """What `accelerate launch --cpu --num_processes 2` leaves in the one process it starts (measured)."""
    clean_env.setenv("ACCELERATE_USE_CPU", "True")
    clean_env.setenv("MASTER_ADDR", "127.0.0.1")
    clean_env.setenv("MASTER_PORT", "29500")
    with pytest.raises(PeftkitError, match="starts only ONE process"):
        distributed.check_launch(training_args(tmp_path, use_cpu=True))


def test_single_cpu_process_from_accelerate_passes(clean_env, tmp_path):
    """`accelerate launch --cpu` with one process sets ACCELERATE_USE_CPU but no MASTER_ADDR: legitimate."""
    clean_env.setenv("ACCELERATE_USE_CPU", "True")
    distributed.check_launch(training_args(tmp_path, use_cpu=True))


def test_fsdp_without_cuda_is_refused(clean_env):
    clean_env.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(PeftkitError, match="FSDP needs CUDA"):
        distributed.check_launch(SimpleNamespace(use_cpu=True))


def test_adjust_sets_use_cpu_for_multi_process_without_cuda(clean_env):
    clean_env.setenv("WORLD_SIZE", "2")
    original = {"use_cpu": False, "ddp_backend": "gloo"}
    adjusted = distributed.adjust_training_args_for_launch(original, has_cuda=False)
    assert adjusted == {"use_cpu": True, "ddp_backend": "gloo"}
    assert original == {"use_cpu": False, "ddp_backend": "gloo"}, "the input must not be modified"


def test_adjust_leaves_gpu_launch_alone(clean_env):
    clean_env.setenv("WORLD_SIZE", "2")
    assert distributed.adjust_training_args_for_launch({"bf16": True}, has_cuda=True) == {"bf16": True}


def test_adjust_drops_ddp_backend_in_one_process(tmp_path):
    adjusted = distributed.adjust_training_args_for_launch({"ddp_backend": "gloo", "bf16": False}, has_cuda=False)
    assert adjusted == {"bf16": False}
    _ = training_args(tmp_path, **adjusted).device  # a backend left in would raise here


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"ACCELERATE_USE_FSDP": "true"}, torch.bfloat16),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, torch.bfloat16),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, None),
    ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, None),  # a stale stage without DeepSpeed in use
])
def test_quant_storage_follows_the_launch(clean_env, env, expected):
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert rank_env.quant_storage_dtype_for_launch(torch.bfloat16) == expected


def test_quant_storage_reads_the_deepspeed_json(clean_env, tmp_path):
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 3}, "train_batch_size": "auto"}))
    clean_env.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    clean_env.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(config))
    assert rank_env.quant_storage_dtype_for_launch(torch.float16) == torch.float16


def test_rank_and_world_size_from_the_environment(clean_env):
    assert rank_env.world_size() == 1 and rank_env.is_main_process()
    clean_env.setenv("WORLD_SIZE", "4")
    clean_env.setenv("RANK", "3")
    assert rank_env.world_size() == 4
    assert not rank_env.is_main_process()
    clean_env.delenv("WORLD_SIZE")
    clean_env.delenv("RANK")
    clean_env.setenv("OMPI_COMM_WORLD_SIZE", "2")  # mpirun
    clean_env.setenv("OMPI_COMM_WORLD_RANK", "0")
    assert rank_env.world_size() == 2 and rank_env.is_main_process()


def test_classification_loss_is_not_rescaled_by_the_trainer(tmp_path):
    """Without the flag the Trainer multiplies a classifier's mean loss by ranks and accumulation steps."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import LlamaConfig, LlamaForSequenceClassification, Trainer

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=2, pad_token_id=0)
    model = get_peft_model(LlamaForSequenceClassification(config), LoraConfig(task_type=TaskType.SEQ_CLS, r=2))
    assert Trainer(model=model, args=training_args(tmp_path)).model_accepts_loss_kwargs  # the fault's cause
    distributed.disable_token_count_loss_scaling(model)
    assert not Trainer(model=model, args=training_args(tmp_path)).model_accepts_loss_kwargs
