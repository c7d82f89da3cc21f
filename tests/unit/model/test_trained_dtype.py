"""A frozen base stored in bf16 keeps every trained weight (LoRA and the new head) and its gradient in fp32."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def tiny_bf16_classifier():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=2, pad_token_id=0)
    return LlamaForSequenceClassification(config).to(torch.bfloat16)


def attach(trainable_dtype: str, **adapter):
    from peftkit.model.adapter import attach_adapter
    from peftkit.recipe.sections import AdapterSection

    section = AdapterSection(r=4, lora_alpha=8, target_modules="all-linear", trainable_dtype=trainable_dtype,
                             **adapter)
    return attach_adapter(tiny_bf16_classifier(), section, "SEQ_CLS")


def trained_dtypes(model) -> dict[str, torch.dtype]:
    return {name: p.dtype for name, p in model.named_parameters() if p.requires_grad}


def test_bf16_base_trains_head_and_lora_in_fp32_without_autocast(one_torch_thread):
    model = attach("float32")
    dtypes = trained_dtypes(model)
    assert any("score" in n for n in dtypes) and any("lora_A" in n for n in dtypes)
    assert set(dtypes.values()) == {torch.float32}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}  # the base really stays in 16 bits
    ids = torch.randint(1, 100, (2, 8))
    out = model(input_ids=ids, labels=torch.tensor([0, 1]))  # no autocast: the hooks bridge the dtypes
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and g.dtype == torch.float32 for g in grads.values())
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "score" in n)


def test_bf16_base_with_trained_embeddings_keeps_layers_dtype(one_torch_thread):
    model = attach("float32", modules_to_save=["embed_tokens"])
    assert set(trained_dtypes(model).values()) == {torch.float32}
    out = model(input_ids=torch.randint(1, 100, (2, 8)), labels=torch.tensor([0, 1]))
    out.loss.backward()  # integer input, fp32 embedding, bf16 layers after it: no dtype mismatch


def test_model_option_leaves_the_head_in_the_base_dtype(one_torch_thread):
    dtypes = trained_dtypes(attach("model"))
    assert {d for n, d in dtypes.items() if "score" in n} == {torch.bfloat16}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}  # PEFT's own upcast
