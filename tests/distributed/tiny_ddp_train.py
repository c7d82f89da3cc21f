r"""Tiny LoRA sequence-classification run that proves a multi-process launch really shares the work.

    python tests/distributed/tiny_ddp_train.py --base /tmp/base --save-base          # once: the base weights
    python tests/distributed/tiny_ddp_train.py --base /tmp/base --out /tmp/ref --per-device-batch 8
    accelerate launch --config_file accelerate_configs/cpu_2proc.yaml tests/distributed/tiny_ddp_train.py \
        --base /tmp/base --out /tmp/ddp --per-device-batch 2 --grad-accum 2

Every rank writes ``rank{R}.json`` to ``--out``: world sizes as the launcher, torch.distributed and the Trainer
see them, the dataset indices of every batch this rank received (the dataloader prefetches one batch past the
last step), the logged losses, how many elements of a base weight this rank holds (ZeRO-3 partitions them), and
a hash of the final trainable weights. Rank 0 also writes ``adapter.safetensors`` so a test can compare weights
across runs numerically.

The base is a random 2-layer Llama classifier (no download); rows have a fixed length and nothing random runs
during training, so runs with the same global batch agree whatever the number of ranks that share it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from peft import LoraConfig, TaskType, get_peft_model
from safetensors.torch import save_file
from torch.utils.data import Dataset
from transformers import AutoModelForSequenceClassification, LlamaConfig, Trainer, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's peftkit, installed or not
from peftkit.core.launch import launched_world_size
from peftkit.trainer.launch import adjust_training_args_for_launch, check_launch, disable_token_count_loss_scaling

VOCAB = 64
SEQ_LEN = 12


class IndexedRows(Dataset):
    """Synthetic rows that carry their own index; the label is learnable (first token in the upper half)."""

    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(1, VOCAB, (size, SEQ_LEN), generator=generator)  # 0 is the pad token

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        ids = self.input_ids[index]
        return {"idx": index, "input_ids": ids, "labels": int(ids[0] >= VOCAB // 2)}


class RecordingCollator:
    """Stacks rows and records the indices of each batch this rank receives (the model never sees ``idx``)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        self.batches.append([int(row["idx"]) for row in rows])
        input_ids = torch.stack([row["input_ids"] for row in rows])
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": torch.tensor([row["labels"] for row in rows]),
        }


def save_base_model(path: Path, seed: int = 0) -> None:
    """Write a random 2-layer Llama classifier to ``path``: every run then starts from the same weights.

    Loading it with ``from_pretrained`` (rather than building it in each run) matters for ZeRO-3, whose sharded
    construction (``deepspeed.zero.Init``) initialises weights differently from a plain CPU build.
    """
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=SEQ_LEN,
        num_labels=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(path)


def build_model(base: Path, seed: int) -> torch.nn.Module:
    """The saved base with LoRA on all linear layers (the ``score`` head trains too), seeded identically."""
    model = AutoModelForSequenceClassification.from_pretrained(base)  # sharded on load under ZeRO-3
    torch.manual_seed(seed)  # LoRA init must not depend on how much randomness loading consumed
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")
    model = get_peft_model(model, lora)
    disable_token_count_loss_scaling(model)
    return model


def trainable_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full copies of the trainable parameters, gathered from ZeRO-3 partitions when there are any."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    partitioned = any(hasattr(p, "ds_id") for p in params.values())
    if partitioned:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None)
    else:
        gather = nullcontext()
    with gather:
        return {name: p.detach().float().cpu().clone() for name, p in sorted(params.items())}


def weights_hash(weights: dict[str, torch.Tensor]) -> str:
    """sha256 over names and exact float32 bytes: equal hashes mean bitwise-equal weights."""
    digest = hashlib.sha256()
    for name, tensor in weights.items():
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def local_numel(model: torch.nn.Module, suffix: str) -> int:
    """Elements of one frozen base weight held by this rank (ZeRO-3: its partition; otherwise the full tensor)."""
    for name, param in model.named_parameters():
        if name.endswith(suffix):
            return int(param.ds_tensor.numel()) if hasattr(param, "ds_tensor") else param.numel()
    raise KeyError(suffix)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, type=Path, help="base model folder (see --save-base)")
    parser.add_argument("--save-base", action="store_true", help="only write the base model to --base")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--per-device-batch", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw-args", action="store_true", help="skip adjust_training_args_for_launch (trap demo)")
    parser.add_argument("--local_rank", type=int, help="passed by the deepspeed launcher; unused (LOCAL_RANK is set)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.save_base:
        save_base_model(args.base, args.seed)
        return
    started = time.perf_counter()
    train_kwargs = {
        "output_dir": str(args.out / "trainer"),
        "per_device_train_batch_size": args.per_device_batch,
        "gradient_accumulation_steps": args.grad_accum,
        "max_steps": args.max_steps,
        "learning_rate": 1e-2,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "seed": args.seed,
        "data_seed": args.seed,
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
    if not args.raw_args:
        train_kwargs = adjust_training_args_for_launch(train_kwargs, torch.cuda.is_available())
    training_args = TrainingArguments(**train_kwargs)
    check_launch(training_args)

    model = build_model(args.base, args.seed)
    collator = RecordingCollator()
    trainer = Trainer(
        model=model, args=training_args, train_dataset=IndexedRows(args.rows, args.seed), data_collator=collator
    )
    trainer.train()

    weights = trainable_weights(model)  # the same parameter objects that DDP/DeepSpeed wrap
    rank = training_args.process_index
    report = {
        "rank": rank,
        "launched_world_size": launched_world_size(),
        "trainer_world_size": training_args.world_size,
        "dist_world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "distributed_type": str(trainer.accelerator.state.distributed_type),
        "use_cpu": training_args.use_cpu,
        "batches": collator.batches,
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "base_weight_local_numel": local_numel(model, "layers.0.self_attn.q_proj.base_layer.weight"),
        "trainable_hash": weights_hash(weights),
        "seconds": round(time.perf_counter() - started, 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{rank}.json").write_text(json.dumps(report, indent=1))
    if rank == 0:
        save_file(weights, str(args.out / "adapter.safetensors"))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
