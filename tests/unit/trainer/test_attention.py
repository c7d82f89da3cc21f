"""peftkit.trainer.attention: the math sdpa kernel on CPU reaches training, and computes what the default kernel
computes.

Tolerance: float32 throughout. The math and flash kernels reduce in different orders; on the tiny Llama that
moves logits by ~1e-7 and the loss by less. 1e-5 is far above that noise and far below what a mask mistake does
(a padding token or a neighbouring packed sequence let into the attention moves logits by ~1e-2 and more, as the
tests that compare with separate sequences show).
"""

from __future__ import annotations

import pytest
import torch

from peftkit.trainer.attention import attention_kernel, with_attention_kernel
from peftkit.trainer.speed import cpu_attention_kernel
from tests.conftest import tiny_recipe, write_recipe
from tests.helpers.sft_fixtures import smollm2_tokenizer, tiny_causal_dir  # noqa: F401

FLASH_OP = "aten::_scaled_dot_product_flash_attention_for_cpu"
TEXTS = ["Review: a charming and often affecting journey.\nSentiment: positive<|im_end|>",
         "Review: unflinchingly bleak\nSentiment: negative<|im_end|>",
         "Review: the acting , costumes , music , cinematography and sound are all astounding\nSentiment: positive"]


def test_the_rule_math_on_cpu_default_on_cuda_recipe_wins():
    assert cpu_attention_kernel("math", has_cuda=True) == "default"  # flash/efficient kernels are the fast ones there
    assert cpu_attention_kernel("default", has_cuda=False) == "default"
    assert cpu_attention_kernel("math", has_cuda=False, packing=True) == "math"
    assert cpu_attention_kernel(None, has_cuda=False) in ("math", "default")


def test_the_context_switches_the_kernel_only_for_math_on_cpu():
    with attention_kernel("math", "cpu"):
        assert not torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled()  # restored on leaving
    for kernel, device in (("default", "cpu"), ("math", "cuda")):
        with attention_kernel(kernel, device):
            assert torch.backends.cuda.flash_sdp_enabled()


def test_the_trainer_wrapper_keeps_the_class_name_and_enters_the_kernel():
    from transformers import Trainer

    cls = with_attention_kernel(Trainer, "math")
    assert cls.__name__ == "Trainer" and issubclass(cls, Trainer)

    class Args:
        class device:
            type = "cpu"

    trainer = cls.__new__(cls)
    trainer.args = Args()
    with trainer.compute_loss_context_manager():
        assert not torch.backends.cuda.flash_sdp_enabled()
    assert torch.backends.cuda.flash_sdp_enabled()
    with torch.no_grad(), trainer.compute_loss_context_manager():  # prediction steps: forward only, flash is faster
        assert torch.backends.cuda.flash_sdp_enabled()


def test_a_bad_value_names_the_field():
    from peftkit.errors import PeftkitError
    from peftkit.recipe import load_recipe
    from tests.helpers.sft_fixtures import REPO

    with pytest.raises(PeftkitError, match=r"'model.cpu_attention_kernel' must be math or default"):
        load_recipe(REPO / "recipes" / "sst2" / "smollm2_lora_cls.yaml", ["model.cpu_attention_kernel=flash"])


# ---- the lever reaches training: which sdpa kernel ran during a real (tiny) run ----------------------------


def ops_during_run(raw: dict, tmp_path) -> set[str]:
    from peftkit.recipe import load_recipe
    from peftkit.run import run

    recipe = load_recipe(write_recipe(tmp_path / "recipe.yaml", raw))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run(recipe)
    return {event.key for event in prof.key_averages()}


@pytest.mark.parametrize("kernel", ["math", "default"])
def test_the_kernel_reaches_a_classification_run(kernel, tmp_path, tiny_llama_dir, sst2_small, one_torch_thread):
    """Padded batches of 8 sentences through the classification head: with math, sdpa never picks flash in
    training (evaluation is off: forward-only passes keep torch's choice)."""
    raw = tiny_recipe(tiny_llama_dir, sst2_small, tmp_path / "run",
                      model={"attn_implementation": "sdpa", "cpu_attention_kernel": kernel},
                      train={"max_steps": 2, "bf16": False}, evaluate={"enabled": False})
    raw["data"].update(max_train_samples=32, max_eval_samples=8)
    ops = ops_during_run(raw, tmp_path)
    assert "aten::scaled_dot_product_attention" in ops
    assert (FLASH_OP in ops) == (kernel == "default")


def test_math_reaches_a_packed_generative_run(tmp_path, tiny_causal_dir, sst2_small, one_torch_thread, capsys):
    """Packed, padding-free rows with math asked for (not the default there): the packing check runs under math
    and passes, and flash never runs in training."""
    raw = tiny_recipe(tiny_causal_dir, sst2_small, tmp_path / "run", task="generative_classification",
                      model={"attn_implementation": "sdpa", "cpu_attention_kernel": "math"},
                      train={"max_steps": 2, "per_device_train_batch_size": 4, "packing": True, "bf16": False},
                      evaluate={"enabled": False})
    raw["data"].update(max_train_samples=32, max_eval_samples=8)
    ops = ops_during_run(raw, tmp_path)
    assert "aten::scaled_dot_product_attention" in ops and FLASH_OP not in ops
    assert "packing check: packed and separate log-probabilities agree" in capsys.readouterr().out


# ---- the same numbers: logits, loss and gradients with and without the math kernel -------------------------


def loss_logits_grads(model, batch, kernel: str):
    model.zero_grad(set_to_none=True)
    with attention_kernel(kernel, "cpu"):
        out = model(**batch, use_cache=False)
    out.loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return out.loss.detach(), out.logits.detach(), grads


@pytest.fixture(scope="module")
def causal_lm(tiny_causal_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_causal_dir, attn_implementation="sdpa", dtype=torch.float32)


def collated(tokenizer, layout: str):
    """The three batches a causal LM sees: right- or left-padded rows with an attention mask, or TRL's packed,
    padding-free row (position_ids restart at each sequence, no mask)."""
    if layout == "packed":
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        collate = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
        return collate([{"input_ids": tokenizer(t)["input_ids"]} for t in TEXTS])
    batch = dict(tokenizer(TEXTS, padding=True, padding_side=layout.split("-")[1], return_tensors="pt"))
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return batch


@pytest.mark.parametrize("layout", ["padded-right", "padded-left", "packed"])
def test_math_and_default_kernels_agree_on_a_tiny_llama(layout, causal_lm, smollm2_tokenizer):
    batch = collated(smollm2_tokenizer, layout)
    if layout == "packed":
        assert batch["input_ids"].shape[0] == 1 and "position_ids" in batch and "attention_mask" not in batch
    else:
        assert int((batch["attention_mask"] == 0).sum()) > 0  # the batch really has padding
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss_d, logits_d, grads_d = loss_logits_grads(causal_lm, batch, "default")
    assert FLASH_OP in {e.key for e in prof.key_averages()}  # two different kernels are compared
    loss_m, logits_m, grads_m = loss_logits_grads(causal_lm, batch, "math")
    keep = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones(logits_d.shape[:2], dtype=bool)
    assert abs(float(loss_d - loss_m)) < 1e-5
    assert float((logits_d - logits_m)[keep].abs().max()) < 1e-5
    assert float((grads_d - grads_m).abs().max()) < 1e-5 * max(1.0, float(grads_d.abs().max()))


def test_math_keeps_packed_sequences_apart(causal_lm, smollm2_tokenizer):
    """The packed row under math gives each sequence's own log-probabilities, as when run alone."""
    from peftkit.trainer.packing import packing_gap

    first, second = (smollm2_tokenizer(t)["input_ids"] for t in TEXTS[:2])
    with attention_kernel("math", "cpu"):
        assert packing_gap(causal_lm, first, second, smollm2_tokenizer.pad_token_id) < 1e-4


def test_math_and_default_agree_on_the_classification_head(tiny_llama_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=2, attn_implementation="sdpa")
    model.config.pad_token_id = tokenizer.pad_token_id
    batch = tokenizer(["a charming journey", "bleak and desperate , yet the acting is astounding", "fine"],
                      padding=True, return_tensors="pt")
    batch["labels"] = torch.tensor([1, 0, 1])
    loss_d, logits_d, grads_d = loss_logits_grads(model, batch, "default")
    loss_m, logits_m, grads_m = loss_logits_grads(model, batch, "math")
    assert abs(float(loss_d - loss_m)) < 1e-5 and float((logits_d - logits_m).abs().max()) < 1e-5
    assert float((grads_d - grads_m).abs().max()) < 1e-5 * max(1.0, float(grads_d.abs().max()))


def test_the_speed_line_names_the_kernel_only_when_the_recipe_left_it_unset(capsys):
    from peftkit.trainer.speed import apply_speed_defaults

    apply_speed_defaults({}, attention_choice=None)
    assert f"model.cpu_attention_kernel={cpu_attention_kernel(None, has_cuda=False)}" in capsys.readouterr().out
    apply_speed_defaults({}, attention_choice="default")
    assert "cpu_attention_kernel" not in capsys.readouterr().out
