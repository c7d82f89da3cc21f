"""The SFT loss's LM head on the learned positions only.

trl 1.16's SFTTrainer already computes its loss through a fused, chunked LM head (``trl.trainer.utils.
add_fused_lm_head``: per-token log-probabilities, entropy and top-1 hits without keeping ``[tokens x vocab]``
logits for the backward). Which positions it projects depends on the device: on CUDA/XPU (Triton) only those
whose next-token label is not -100; everywhere else (CPU) EVERY position, with the masked ones zeroed after
the fact. For generative classification two positions of a ~25-token example are learned (label word, EOS), so
on CPU ~90% of the LM head's work (2 x hidden x 49,152 FLOPs per token forward, as many backward, in fp32 on
CPU) and of its [tokens x 32,768] fp32 temporaries is thrown away: projecting only the learned positions made
packed SmolLM2 steps ~1.4x faster at a 13-16% lower peak RSS (benchmarks/README.md, "SFT memory").

:func:`project_learned_positions_only` re-patches the fused forward so it projects only the learned positions
on every device, with TRL's own kernel (``trl.kernels.ChunkedLogProbFunction``) and output class: the loss,
its gradients and TRL's logged metrics (entropy, mean_token_accuracy) are the same, since the skipped
positions were zeroed anyway. Models the re-patch does not cover (a scaled or soft-capped LM head, MoE router
losses) keep TRL's forward.
"""

from __future__ import annotations

import functools
import types

# What SFTTrainer.compute_loss reads from the fused outputs besides log_probs (trl 1.16, sft_trainer.py).
SFT_OUTPUTS = ("log_probs", "entropy", "is_top1")
# Config attributes that make TRL transform the logits before the softmax (trl.trainer.utils.add_fused_lm_head);
# the re-patch covers plain heads only and leaves models with any of these to TRL's own forward.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                    "logits_scaling", "output_router_logits")


def covers(model) -> bool:
    """Whether the re-patch applies to this (base, non-PEFT) model: a plain LM head, no router loss."""
    config = model.config.get_text_config()
    return all(getattr(config, name, None) in (None, False) for name in LOGIT_TRANSFORMS)


def project_learned_positions_only(model) -> bool:
    """Make ``model(..., labels=..., fused_lm_head=True)`` project only positions whose next label is not -100.

    ``model`` is the base model (``peft_model.get_base_model()``) that SFTTrainer patched; calls without
    ``fused_lm_head`` (generation, evaluation, label scoring) go to the forward TRL left. Returns whether the
    model was re-patched.
    """
    from torch.distributed.tensor import DTensor
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import FusedCausalLMOutput, maybe_gather_lm_head_ctx

    if not covers(model):
        return False
    trl_forward = model.forward

    @functools.wraps(type(model).forward)  # generate() validates its kwargs against the original signature
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head:
            return trl_forward(*args, fused_lm_head=False, labels=labels, shift_labels=shift_labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:  # position t predicts token t+1, as in TRL's forward
            hidden, targets = hidden[:, :-1], labels[:, 1:]
        else:
            targets = shift_labels
        head = self.get_output_embeddings()
        hidden, targets = hidden.to(head.weight.device), targets.to(head.weight.device)
        mask = targets != -100
        weight, bias = head.weight, head.bias
        if isinstance(weight, DTensor):  # FSDP2 shards the head: gather it, as TRL does
            weight, bias = weight.full_tensor(), None if bias is None else bias.full_tensor()
        # only the learned rows go through the projection; TRL's kernel and chunk size, and TRL's gather of a
        # ZeRO-3-partitioned head (the kernel reads the weight directly, without the head's forward hook)
        with maybe_gather_lm_head_ctx(weight, bias):
            per_token = ChunkedLogProbFunction.apply(hidden[mask], weight, bias, targets[mask], 1.0, 32768, None, 1.0,
                                                     SFT_OUTPUTS)
        # back to [batch, positions], zero where nothing is learned (masked_scatter keeps an all-masked batch
        # connected to the graph, like TRL)
        log_probs, entropy, _, _, is_top1 = (None if x is None else x.new_zeros(mask.shape).masked_scatter(mask, x)
                                             for x in per_token)
        denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-log_probs.sum() / denominator, log_probs=log_probs, entropy=entropy,
                                   is_top1=is_top1, label_mask=mask)

    model.forward = types.MethodType(forward, model)
    return True


def apply_recipe_choice(trainer, positions: str) -> bool:
    """``model.lm_head_positions`` on a built SFTTrainer: ``learned`` re-patches its (base) model, ``all`` keeps
    TRL's forward. Returns whether the model was re-patched."""
    if positions != "learned":
        return False
    model = trainer.model
    try:
        return project_learned_positions_only(model.get_base_model() if hasattr(model, "get_base_model") else model)
    except ImportError as missing:  # another trl release moved its fused head: keep trl's own (correct) forward
        from peftkit.core.console import warn

        warn(f"model.lm_head_positions: learned needs trl 1.16's fused LM head ({missing}); using trl's forward, "
             "which projects every position on CPU (slower, same loss)")
        return False
