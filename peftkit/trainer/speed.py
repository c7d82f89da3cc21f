"""Speed defaults: TrainingArguments / SFTConfig settings peftkit fills in when the recipe leaves them unset.

Each rule is on only because it was measured to pay off without changing what is learned beyond run-to-run
noise; the measurements and the commands that reproduce them are in ``benchmarks/README.md`` (SmolLM2-135M +
LoRA on SST-2, CPU). A key the recipe sets itself is never touched: ``train.bf16: false`` or
``train.train_sampling_strategy: random`` turn a rule off.

Measured and ON by default
* ``train_sampling_strategy: group_by_length`` (every device; not for packed SFT, whose rows have no padding).
  Batches are drawn from length-sorted groups of up to 50 batches, so little of each batch is padding. Same
  examples, same epoch, same number of steps; only which examples share a batch changes. peftkit uses
  :class:`EpochSeededLengthGroupedSampler` for it (through :class:`SeededLengthGrouping`), not
  transformers' own sampler, whose order comes from the global RNG at the start of each epoch: after a resume in
  a later epoch, or on DDP ranks whose RNGs drifted apart during the previous epoch, that order differs from the
  uninterrupted run's, so examples are repeated or skipped.
* ``bf16: true`` (+ ``use_cpu: true``, which transformers requires for bf16 on CPU) on CPUs with native bf16
  (``avx512_bf16`` or ``amx_bf16``): autocast runs the matmuls in bf16, the weights and the optimizer stay fp32.
  Not on CPUs without it (emulated bf16 is slower), and not for 4-bit/8-bit models (bitsandbytes owns their
  compute dtype on CPU). Elsewhere ``bf16: false`` is set explicitly, so that trl.SFTConfig's own default
  (bf16 on) cannot change a recipe's precision behind its back: the same recipe means the same precision for
  every task.
* Padding to a multiple of 8 only on CUDA (:func:`collator_pad_multiple`): GPU tensor cores want multiples of 8;
  on CPU it is pure waste (SST-2, batches of 16, length-grouped: 27% of the epoch's positions were padding with
  multiples of 8, 8% without).
* ``model.cpu_attention_kernel: math`` on CPU for padded batches (classification head, distillation, unpacked
  SFT): sdpa's math kernel instead of the flash kernel it picks on CPU, in the forward of every training step
  (:mod:`peftkit.trainer.attention`). 1.31x useful tok/s on the SmolLM2 head recipe; the same attention (fp32 loss equal
  to 6e-8). Not for padding-free packed rows (0.82x there: one long row with a block-diagonal mask), and not in
  evaluation (forward alone, math is slower). Decided in :func:`cpu_attention_kernel`; benchmarks/README.md.
* Packing with padding-free rows for SFT is decided in ``peftkit.recipe`` (on where the attention keeps packed
  sequences apart) and checked on the real model at the start of each run (``peftkit.trainer.packing``).

Measured and OFF (left to the recipe)
* ``torch_compile``: on this CPU its warm-up (two compiles, ~25 minutes) is paid back only after thousands of
  steps, and any recompile (a new length, an evaluation pass) costs it again.
* ``gradient_checkpointing``: costs time, saves memory; for when memory is short.

Not measured here (no GPU was lent): on CUDA only the sampler rule applies; set ``bf16``/``fp16`` yourself.
"""

from __future__ import annotations

import platform
from typing import Any

from peftkit.core.launch import is_main_process

# Keys whose presence in the recipe means the user chose the precision.
PRECISION_KEYS = ("bf16", "fp16")


def speed_defaults(train: dict[str, Any], *, has_cuda: bool, cpu_has_bf16: bool, quantized: bool = False,
                   packing: bool = False) -> dict[str, Any]:
    """Return a copy of ``train`` (TrainingArguments keyword arguments) with peftkit's speed defaults filled in.

    Only keys the recipe did not set are filled; an explicit setting always wins.

    Args:
        train: the recipe's ``train`` section (TrainingArguments keyword arguments); not modified.
        has_cuda: whether training runs on a CUDA GPU.
        cpu_has_bf16: whether the CPU computes bf16 natively (see :func:`cpu_has_native_bf16`).
        quantized: whether the base model is loaded in 4-bit or 8-bit (bitsandbytes).
        packing: whether TRL batches padding-free (packed rows, or padding_free batches): then there is no
            padding to avoid and the sampler is left alone.
    """
    out = dict(train)
    if not packing:
        out.setdefault("train_sampling_strategy", "group_by_length")
    if not any(k in train for k in PRECISION_KEYS):
        # Always an explicit choice: trl.SFTConfig would otherwise turn bf16 on by itself (bf16=None -> True).
        out["bf16"] = not has_cuda and cpu_has_bf16 and not quantized
    if not has_cuda:
        if out.get("bf16"):
            # transformers refuses bf16 without CUDA unless use_cpu is set ("Your setup doesn't support bf16/gpu")
            out.setdefault("use_cpu", True)
    return out


# peftkit's choice of sdpa kernel on CPU when the recipe leaves model.cpu_attention_kernel unset, for padded
# batches and for padding-free (packed) rows; measured side by side on `peftkit train` (benchmarks/README.md).
CPU_ATTENTION_KERNEL = {"padded": "math", "packed": "default"}


def cpu_attention_kernel(choice: str | None, *, has_cuda: bool, packing: bool = False) -> str:
    """The sdpa kernel training uses: ``math`` or ``default`` (torch's own choice).

    ``choice`` is the recipe's ``model.cpu_attention_kernel`` (None: peftkit's measured default). On CUDA always
    ``default``: there the flash/efficient kernels are the fast ones.
    """
    if has_cuda:
        return "default"
    if choice is not None:
        return choice
    return CPU_ATTENTION_KERNEL["packed" if packing else "padded"]


class EpochSeededLengthGroupedSampler:
    """Length-grouped order that depends only on (seed, epoch): resumable and identical on every rank.

    The grouping is transformers' ``get_length_grouped_indices`` (random permutation, groups of up to 50 batches
    sorted by length, longest batch first); only the random source differs: a generator seeded with
    ``seed + epoch`` instead of the global RNG. The Trainer calls ``set_epoch`` before each epoch (through
    accelerate's data loader, also after skipping batches on resume).
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        import torch
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class SeededLengthGrouping:
    """Trainer mixin: the ``group_by_length`` sampler is :class:`EpochSeededLengthGroupedSampler`.

    Other sampling strategies, and datasets without ``input_ids`` or without a length, keep the Trainer's own
    behaviour.
    """

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        column_names = getattr(dataset, "column_names", None) or []
        if self.args.train_sampling_strategy != "group_by_length" or "input_ids" not in column_names:
            return super()._get_train_sampler(train_dataset)
        if self.args.length_column_name in column_names:
            lengths = list(dataset[self.args.length_column_name])
        else:
            lengths = [len(ids) for ids in dataset["input_ids"]]
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        # Grouped by the global batch (every rank, every accumulation step): accelerate deals the sampler's
        # order out to the ranks batch by batch, so an optimizer step sees the same examples at any world size.
        global_batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        return EpochSeededLengthGroupedSampler(lengths, global_batch, seed)


def with_seeded_length_grouping(trainer_cls: type) -> type:
    """``trainer_cls`` with the :class:`SeededLengthGrouping` mixin (the one layer alone)."""
    return type(trainer_cls.__name__, (SeededLengthGrouping, trainer_cls), {})


def collator_pad_multiple(args) -> int | None:
    """``pad_to_multiple_of`` for the training collator: 8 on CUDA (tensor-core friendly shapes), none on CPU."""
    return 8 if args.device.type == "cuda" else None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (x86 ``avx512_bf16`` or ``amx_bf16``), from /proc/cpuinfo.

    ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is not enough: it is also true on plain AVX-512, where bf16
    is emulated. Anything we cannot read counts as "no".
    """
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        return False
    return False


def apply_speed_defaults(train: dict[str, Any], *, quantized: bool = False, packing: bool = False,
                         attention_choice: str | None = "default") -> dict[str, Any]:
    """:func:`speed_defaults` for this machine, printing what was filled in (main process only).

    ``attention_choice``: the recipe's ``model.cpu_attention_kernel``; when it is None (unset) the kernel peftkit
    chooses on CPU is printed in the same line.
    """
    import torch

    has_cuda = torch.cuda.is_available()
    out = speed_defaults(train, has_cuda=has_cuda, cpu_has_bf16=not has_cuda and cpu_has_native_bf16(),
                         quantized=quantized, packing=packing)
    filled = {k: v for k, v in out.items() if k not in train}
    if attention_choice is None and not has_cuda:
        filled["model.cpu_attention_kernel"] = cpu_attention_kernel(None, has_cuda=False, packing=packing)
    if filled and is_main_process():
        shown = ", ".join(f"{k}={v}" for k, v in filled.items())
        print(f"peftkit speed defaults: {shown} (set them under train: or model: to choose otherwise)", flush=True)
    return out
