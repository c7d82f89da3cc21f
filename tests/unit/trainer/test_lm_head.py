"""The SFT loss with the LM head on the learned positions only (peftkit/trainer/lm_head.py): the same loss,
log-probabilities, metrics and LoRA gradients as TRL's fused head over every position and as the model's own
full-logits cross-entropy; and ``model.lm_head_positions`` reaches the trainer."""

from __future__ import annotations

import pytest

from tests.conftest import REPO, tiny_recipe, write_recipe
from tests.helpers.sft_fixtures import tiny_causal_dir  # noqa: F401


@pytest.fixture()
def lora_model(tiny_causal_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_dir, dtype=torch.float32, attn_implementation="eager")
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer does
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                                            init_lora_weights=False))  # non-zero B: gradients reach both factors
    return model


def packed_batch():
    """One padding-free row of three sequences, loss on each one's last token only (generative classification)."""
    import torch

    generator = torch.Generator().manual_seed(1)
    lengths = (9, 14, 7)
    ids = torch.randint(5, 40000, (1, sum(lengths)), generator=generator)
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    labels = torch.full_like(ids, -100)
    ends = torch.tensor(lengths).cumsum(0) - 1
    labels[0, ends] = ids[0, ends]
    return {"input_ids": ids, "position_ids": position_ids, "labels": labels}


def loss_and_grads(model, batch, **kwargs):
    model.zero_grad()
    out = model(**batch, **kwargs)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out, grads


def test_learned_positions_give_the_same_loss_metrics_and_gradients(lora_model):
    import torch

    from peftkit.trainer.lm_head import project_learned_positions_only

    batch = packed_batch()
    # the model's own full-logits cross-entropy (use_cache=False, as TRL: only then packed sequences stay apart)
    plain, plain_grads = loss_and_grads(lora_model, batch, use_cache=False)
    every, every_grads = loss_and_grads(lora_model, batch, fused_lm_head=True)  # TRL's head on every position
    assert project_learned_positions_only(lora_model.get_base_model())
    learned, learned_grads = loss_and_grads(lora_model, batch, fused_lm_head=True)

    assert learned.label_mask.sum() == 3
    torch.testing.assert_close(learned.loss, every.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(learned.loss, plain.loss, rtol=1e-5, atol=1e-5)
    for name in ("log_probs", "entropy"):
        torch.testing.assert_close(getattr(learned, name), getattr(every, name), rtol=1e-5, atol=1e-5)
    assert torch.equal(learned.is_top1, every.is_top1) and torch.equal(learned.label_mask, every.label_mask)
    assert len(learned_grads) == len(every_grads) > 0
    for name, grad in learned_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, every_grads[name], rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_calls_without_the_fused_head_and_generation_are_unchanged(lora_model, tiny_causal_dir):
    import torch

    from peftkit.trainer.lm_head import project_learned_positions_only

    batch = packed_batch()
    with torch.no_grad():
        inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
        before = lora_model(**inputs).logits
        project_learned_positions_only(lora_model.get_base_model())
        after = lora_model(**inputs).logits
        generated = lora_model.generate(input_ids=batch["input_ids"][:, :5], max_new_tokens=2, do_sample=False)
    assert torch.equal(before, after) and generated.shape == (1, 7)


def test_an_all_masked_batch_gives_a_differentiable_zero(lora_model):
    from peftkit.trainer.lm_head import project_learned_positions_only

    batch = packed_batch()
    batch["labels"][:] = -100
    project_learned_positions_only(lora_model.get_base_model())
    out = lora_model(**batch, fused_lm_head=True)
    out.loss.backward()
    assert out.loss.item() == 0.0


def test_models_with_transformed_logits_keep_trls_forward(tiny_causal_dir):
    from transformers import AutoModelForCausalLM

    from peftkit.trainer.lm_head import project_learned_positions_only

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir)
    model.config.final_logit_softcapping = 30.0
    forward = model.forward
    assert not project_learned_positions_only(model) and model.forward == forward


@pytest.mark.parametrize("positions", ["learned", "all"])
def test_the_recipe_switch_reaches_the_trainer(positions, tmp_path, tiny_causal_dir, sst2_small, monkeypatch):
    """A real (tiny) run, padding-free batches of 4 examples: with `learned` the LM head projects only the 4 label
    words and end-of-sequence tokens of each step; with `all`, TRL's own forward projects every position of the
    joined row."""
    import trl.kernels
    import trl.trainer.utils

    from peftkit.recipe import load_recipe
    from peftkit.run import run

    rows: dict[str, list[int]] = {"peftkit": [], "trl": []}

    def recording(kernel, who):
        class Recording(kernel):
            @staticmethod
            def forward(ctx, hidden, *args):
                rows[who].append(hidden.shape[0])
                return kernel.forward(ctx, hidden, *args)
        return Recording

    monkeypatch.setattr(trl.kernels, "ChunkedLogProbFunction",
                        recording(trl.kernels.ChunkedLogProbFunction, "peftkit"))
    monkeypatch.setattr(trl.trainer.utils, "_ChunkedLogProbFunction",
                        recording(trl.trainer.utils._ChunkedLogProbFunction, "trl"))
    raw = tiny_recipe(tiny_causal_dir, sst2_small, tmp_path / "run", task="generative_classification",
                      model={"lm_head_positions": positions},
                      train={"max_steps": 2, "per_device_train_batch_size": 4, "packing": False, "padding_free": True})
    raw["data"].update(max_train_samples=32, max_eval_samples=8)
    run(load_recipe(write_recipe(tmp_path / "recipe.yaml", raw)))
    if positions == "learned":
        assert rows["trl"] == [] and rows["peftkit"] == [8, 8]  # 4 examples per step, each learns its label word + EOS
    else:
        assert rows["peftkit"] == [] and len(rows["trl"]) == 2 and min(rows["trl"]) > 4 * 10


def test_a_bad_value_names_the_field():
    from peftkit.errors import PeftkitError
    from peftkit.recipe import load_recipe

    with pytest.raises(PeftkitError, match=r"'model.lm_head_positions' must be learned or all, got 'labels'"):
        load_recipe(REPO / "recipes" / "sst2" / "smollm2_lora_gen.yaml", ["model.lm_head_positions=labels"])
