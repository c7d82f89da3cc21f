"""accelerate_configs/*.yaml: each loads with accelerate's own loader and documents how to launch it.

accelerate checks only the top-level keys of a config; keys inside deepspeed_config / fsdp_config are copied
onto the launch arguments without a check, so a misspelt one is silently ignored. They are checked here
against `accelerate launch`'s own options. That the configs really launch is tests/distributed/test_launch.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import launch_command_parser
from accelerate.utils import DistributedType

CONFIGS = Path(__file__).resolve().parents[2] / "accelerate_configs"
EXPECTED = {
    "single_gpu.yaml": DistributedType.NO,
    "ddp.yaml": DistributedType.MULTI_GPU,
    "cpu_2proc.yaml": DistributedType.MULTI_GPU,
    "multi_node.yaml": DistributedType.MULTI_GPU,
    "fsdp2.yaml": DistributedType.FSDP,
    "deepspeed_zero2.yaml": DistributedType.DEEPSPEED,
    "deepspeed_zero3.yaml": DistributedType.DEEPSPEED,
    "deepspeed_zero3_offload.yaml": DistributedType.DEEPSPEED,
}


def launch_option_names() -> set[str]:
    return {action.dest for action in launch_command_parser()._actions}


def test_the_expected_configs_exist():
    assert sorted(path.name for path in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerate(name):
    config = load_config_from_file(str(CONFIGS / name))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == EXPECTED[name]
    assert config.mixed_precision == "no", "precision belongs to the recipe's training arguments"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_nested_keys_are_launch_options(name):
    config = load_config_from_file(str(CONFIGS / name))
    options = launch_option_names()
    nested = list(config.deepspeed_config) + [k if k.startswith("fsdp_") else f"fsdp_{k}" for k in config.fsdp_config]
    assert [key for key in nested if key not in options] == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_header_says_when_and_how(name):
    lines = (CONFIGS / name).read_text().splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    assert len(header) >= 3, "the header explains when to use the config"
    assert f"accelerate launch --config_file accelerate_configs/{name}" in "\n".join(header)


def test_fsdp2_is_version_2_and_zero3_saves_full_weights():
    fsdp = load_config_from_file(str(CONFIGS / "fsdp2.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2
    for name in ("deepspeed_zero3.yaml", "deepspeed_zero3_offload.yaml"):
        deepspeed = load_config_from_file(str(CONFIGS / name)).deepspeed_config
        assert deepspeed["zero_stage"] == 3 and deepspeed["zero3_save_16bit_model"] is True
