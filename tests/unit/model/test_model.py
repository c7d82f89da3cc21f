"""Model loading: pad token, classification head saved and restored, safe loading, 4-bit gradients."""

from __future__ import annotations

import pytest
import torch

from peftkit.errors import PeftkitError
from peftkit.model.adapter import attach_adapter, save_adapter
from peftkit.model.base import load_classifier, load_tokenizer, load_trained_classifier, resolve_model_source
from peftkit.recipe import AdapterSection, ModelSection, QuantizationSection

LABELS = ["negative", "positive"]
TEXTS = ["a gorgeous , witty , seductive movie .", "the plot is nothing but boilerplate clichés", "meh"]


def model_section(path) -> ModelSection:
    return ModelSection(name_or_path=str(path), attn_implementation="eager")


def batch(tokenizer):
    return tokenizer(TEXTS, return_tensors="pt", padding=True)


def test_pad_token_is_set_on_tokenizer_and_model(tiny_llama_dir):
    section = model_section(tiny_llama_dir)
    tokenizer = load_tokenizer(section)
    assert tokenizer.pad_token == tokenizer.eos_token == "[SEP]"
    model = load_classifier(section, QuantizationSection(), LABELS, tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.id2label == {0: "negative", 1: "positive"}


def test_trained_head_and_adapter_come_back_with_identical_logits(tiny_llama_dir, tmp_path):
    section = model_section(tiny_llama_dir)
    tokenizer = load_tokenizer(section)
    torch.manual_seed(0)
    model = attach_adapter(load_classifier(section, QuantizationSection(), LABELS, tokenizer),
                           AdapterSection(r=4), "SEQ_CLS")
    with torch.no_grad():  # stand-in for training: move every trainable weight, the head included
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    assert any("score" in n for n, p in model.named_parameters() if p.requires_grad), "head must train"
    model.eval()
    with torch.no_grad():
        expected = model(**batch(tokenizer)).logits
    (tmp_path / "run").mkdir()
    save_adapter(model, tokenizer, tmp_path / "run" / "adapter")
    tokenizer2, reloaded = load_trained_classifier(tmp_path / "run", section, QuantizationSection(), LABELS)
    with torch.no_grad():
        got = reloaded(**batch(tokenizer2)).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_missing_local_model_folder_is_named():
    with pytest.raises(PeftkitError, match=r"local folder '/no/such/model' does not exist"):
        resolve_model_source(ModelSection(name_or_path="/no/such/model"))


def test_pickle_only_weights_are_refused_unless_allowed(tiny_llama_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_llama_dir, folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(PeftkitError, match=r"only pickle weights \(pytorch_model.bin\)"):
        resolve_model_source(ModelSection(name_or_path=str(folder)))
    resolve_model_source(ModelSection(name_or_path=str(folder), allow_pickle=True))


def lora_grads(model, inputs) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(**inputs, labels=torch.tensor([0, 1, 1])).loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and "lora" in n}


def quantized_model(tiny_llama_dir, repack_fix: bool):
    from peftkit.model.quantize import prepare_for_training

    section, quant = model_section(tiny_llama_dir), QuantizationSection(load_in_4bit=True)
    tokenizer = load_tokenizer(section)
    torch.manual_seed(0)
    model = load_classifier(section, quant, LABELS, tokenizer)
    model = prepare_for_training(model, quant, gradient_checkpointing=False)
    if not repack_fix:
        import bitsandbytes as bnb

        for m in model.modules():
            if isinstance(m, bnb.nn.Linear4bit):
                m.support_avx512bf16_for_cpu = True
    torch.manual_seed(0)
    model = attach_adapter(model, AdapterSection(r=4, lora_dropout=0.0, init_lora_weights="gaussian"), "SEQ_CLS")
    return model, batch(tokenizer)


def test_4bit_lora_gradients_are_unchanged_by_an_evaluation_pass(tiny_llama_dir):
    pytest.importorskip("bitsandbytes")
    model, inputs = quantized_model(tiny_llama_dir, repack_fix=True)
    before = lora_grads(model, inputs)
    with torch.no_grad():
        model(**inputs)  # an evaluation pass: on avx512-bf16 CPUs this is what repacks 4-bit weights
    after = lora_grads(model, inputs)
    assert before.keys() == after.keys() and len(before) > 0
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0, msg=name)


def has_avx512_bf16() -> bool:
    try:
        return "avx512_bf16" in open("/proc/cpuinfo").read()
    except OSError:
        return False


@pytest.mark.skipif(not has_avx512_bf16(), reason="the repack trap exists only on avx512-bf16 CPUs")
def test_without_the_fix_an_evaluation_pass_corrupts_gradients(tiny_llama_dir):
    """Control: shows the test above can fail, i.e. the trap is real on this CPU and the fix is what helps."""
    pytest.importorskip("bitsandbytes")
    model, inputs = quantized_model(tiny_llama_dir, repack_fix=False)
    before = lora_grads(model, inputs)
    with torch.no_grad():
        model(**inputs)
    after = lora_grads(model, inputs)
    assert any(not torch.allclose(after[n], before[n], rtol=1e-3, atol=1e-6) for n in before)


def test_8bit_model_loads_and_trains_a_step(tiny_llama_dir):
    pytest.importorskip("bitsandbytes")
    from peftkit.model.quantize import prepare_for_training

    section, quant = model_section(tiny_llama_dir), QuantizationSection(load_in_8bit=True)
    tokenizer = load_tokenizer(section)
    model = prepare_for_training(load_classifier(section, quant, LABELS, tokenizer), quant, False)
    model = attach_adapter(model, AdapterSection(r=4, init_lora_weights="gaussian"), "SEQ_CLS")
    grads = lora_grads(model, batch(tokenizer))
    assert grads and all(torch.isfinite(g).all() for g in grads.values())
    # lora_B starts at zero, so only B (not A) receives a gradient on the first step
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)
