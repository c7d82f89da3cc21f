"""The attention kernel on CPU: torch's math kernel for ``scaled_dot_product_attention``.

On CPU, sdpa picks its flash kernel whenever it can; at peftkit's short shapes (many sentences of 10-60 tokens)
that kernel was 2.5-4.5x slower than the math kernel for the same attention (``benchmarks/bench_sdpa_cpu.py``),
and attention was 14-36% of a SmolLM2 LoRA step (benchmarks/README.md, "Profile"). The math kernel computes the
same softmax(QK^T)V with the same masks (padding masks, the block-diagonal masks transformers builds from packed
position_ids), in another order: results agree to float rounding.

The kernel is chosen with torch's own switch, ``torch.nn.attention.sdpa_kernel``, around the forward of each
training step: ``Trainer.compute_loss_context_manager`` wraps every forward the Trainer makes, and the switch is
entered there only while gradients are recorded. The gain is all in the backward (flash's backward is the slow
part): forward alone, math was 1.6-2x SLOWER than flash at the same shapes (results/sdpa_cpu_forward.md), so
evaluation, prediction and label scoring (forward under no_grad) keep torch's choice. The backward needs no
switch: the math kernel is made of ordinary operators, whose gradients autograd records in the forward.
Only on CPU; on CUDA the flash/efficient kernels are the fast ones. Whether it is on by default is decided with
the other speed defaults (``peftkit.trainer.speed.cpu_attention_kernel``).
"""

from __future__ import annotations

import contextlib

MATH = "math"
DEFAULT = "default"
KERNELS = (MATH, DEFAULT)


def attention_kernel(kernel: str, device_type: str) -> contextlib.AbstractContextManager:
    """A context in which sdpa uses only the math kernel, when ``kernel`` is math and the device is the CPU."""
    if kernel != MATH or device_type != "cpu":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


class AttentionKernel:
    """Trainer mixin: training forwards (those that record gradients) run under :func:`attention_kernel`
    (``attention_kernel``: math or default)."""

    attention_kernel: str = "default"

    def compute_loss_context_manager(self):
        import torch

        stack = super().compute_loss_context_manager()
        if torch.is_grad_enabled():  # a training step; prediction steps run under no_grad (forward only)
            stack.enter_context(attention_kernel(self.attention_kernel, self.args.device.type))
        return stack


def with_attention_kernel(trainer_cls: type, kernel: str) -> type:
    """``trainer_cls`` with the :class:`AttentionKernel` mixin set to ``kernel`` (peftkit.trainer.trainer composes
    the run's Trainer; this is the one layer alone)."""
    return type(trainer_cls.__name__, (AttentionKernel, trainer_cls), {"attention_kernel": kernel})


def trainer_attention_kernel(recipe, args) -> str:
    """The kernel a run's trainer uses: the recipe's ``model.cpu_attention_kernel``, or peftkit's measured default."""
    from peftkit.trainer.speed import cpu_attention_kernel

    return cpu_attention_kernel(recipe.model.cpu_attention_kernel, has_cuda=args.device.type == "cuda",
                                packing=packed_batches(args))


def packed_batches(args) -> bool:
    """Whether TRL batches padding-free (packed rows or padding_free): one flattened row per batch."""
    return bool(getattr(args, "packing", False) or getattr(args, "padding_free", False))
