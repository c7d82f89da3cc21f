"""The benchmark machinery's arithmetic (benchmarks/lib/common.py, benchmarks/lib/worker.py): ratios, the strided epoch
samples and the epoch-time model. No timing here: speed is measured by the benchmarks themselves."""

from __future__ import annotations

import pytest

from benchmarks.lib.common import ratio_stats
from benchmarks.lib.worker import StridedEpoch, epoch_padding, epoch_time_model


def test_ratios_pair_rounds_and_orient_by_what_is_better():
    base = [{"tok": 10.0, "mb": 4000}, {"tok": 20.0, "mb": 4000}, {"tok": 10.0, "mb": 4000}]
    cand = [{"tok": 30.0, "mb": 2000}, {"tok": 40.0, "mb": 3000}, {"tok": 25.0, "mb": 4000}]
    speed = ratio_stats(base, cand, "tok")
    assert speed["ratios"] == [3.0, 2.0, 2.5] and speed["median"] == 2.5 and (speed["min"], speed["max"]) == (2.0, 3.0)
    memory = ratio_stats(base, cand, "mb", higher_is_better=False)  # > 1: the candidate uses less
    assert memory["ratios"] == [2.0, 1.333, 1.0]


class FixedOrder:
    def __init__(self, order):
        self.order = order

    def __iter__(self):
        return iter(self.order)


@pytest.mark.parametrize("by_size", [False, True])
def test_strided_epoch_length_matches_what_it_yields(by_size):
    lengths = [(i * 7) % 50 + 1 for i in range(203)]  # 12 full batches of 16 and a partial one
    sampler = StridedEpoch(FixedOrder(list(range(203))), 16, stride=3, offset=1, lengths=lengths, pad_multiple=None,
                           by_size=by_size)
    yielded = list(sampler)
    assert len(yielded) == len(sampler) and len(set(yielded)) == len(yielded)
    assert sampler.full_epoch["batches"] == 13


def test_picking_along_sizes_reaches_the_long_batches_that_striding_misses():
    # a length-grouped-like order: 2 long batches among 30 short ones, where plain striding never lands
    lengths = [60] * 32 + [5] * 480
    order = list(range(512))
    order = order[32:240] + order[:16] + order[240:400] + order[16:32] + order[400:]
    longest = {b for b in range(32)}

    def picked(by_size):
        s = StridedEpoch(FixedOrder(order), 16, stride=4, offset=2, lengths=lengths, pad_multiple=None,
                         by_size=by_size)
        return set(s)

    assert not picked(False) & longest
    assert picked(True) & longest


def test_epoch_model_recovers_a_linear_step_cost_and_adds_the_warm_up_once():
    a, b = 0.2, 0.001
    positions = [300, 900, 500, 1200, 700, 400]
    times = [a + b * x for x in positions]
    times[0] += 5.0  # first step: compile / allocation warm-up
    epoch = [300, 500, 700, 900, 1100, 1300, 1500]
    model = epoch_time_model(times, positions, epoch)
    assert model["intercept_s"] == pytest.approx(a, abs=1e-6) and model["s_per_position"] == pytest.approx(b, rel=1e-6)
    assert model["warmup_s"] == pytest.approx(5.0, abs=0.01)
    assert model["epoch_s"] == pytest.approx(5.0 + sum(a + b * x for x in epoch), abs=0.1)


def test_epoch_padding_counts_useful_tokens_and_padded_positions():
    lengths = [3, 5, 8, 8]
    report = epoch_padding([[0, 1], [2, 3]], lengths, pad_multiple=8)
    assert report["useful_tokens"] == 24 and report["positions"] == 8 * 2 + 8 * 2
    assert report["padding_fraction"] == pytest.approx(0.25)


# ---- MFU: the FLOP count per token and the measured matmul peak (benchmarks/lib/mfu.py) ------------------------------

TINY = {"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 4, "intermediate_size": 16, "vocab_size": 10}


def test_flops_per_token_match_a_hand_count():
    from benchmarks.lib.mfu import flops_per_token

    # per layer: q 8x8 + o 8x8 + k 8x4 + v 8x4 = 192, gated MLP 3 x 8x16 = 384 -> 576; 2 layers -> 1152 weights
    # forward: 2 x 1152 + attention 4 x 2 layers x context 5 x (2 heads x 4) = 2304 + 320 = 2624; LM head 2 x 8 x 10
    assert flops_per_token(TINY, context=5, training=False) == 2624
    assert flops_per_token(TINY, context=5, training=False, lm_head_every_token=True) == 2624 + 160
    # training: forward + backward through the frozen base (2x forward) + 6 x the 100 trainable weights
    assert flops_per_token(TINY, context=5, trainable_params=100, lm_head_every_token=True) == 2 * 2784 + 600
    assert flops_per_token(TINY, context=5, trainable_params=100, lm_head_every_token=True,
                           recompute=True) == 3 * 2784 + 600
    # an encoder's MLP has two matrices, not three; no grouped-query: k and v as wide as q
    bert = dict(TINY, model_type="bert", num_key_value_heads=None, head_dim=None)
    assert flops_per_token(bert, context=0, training=False) == 2 * 2 * (4 * 8 * 8 + 2 * 8 * 16)


def test_body_weights_counted_are_the_linear_layers_of_a_real_model():
    """The config-based count against the nn.Linear weights of a tiny Llama built from that config."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from benchmarks.lib.mfu import body_matmul_params, model_facts

    config = LlamaConfig(**{k: v for k, v in TINY.items() if k != "model_type"})
    model = LlamaForCausalLM(config)
    linear = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    facts = model_facts(model, lm_head_every_token=True, recompute=False)
    assert body_matmul_params(facts["config"]) == linear == 1152
    assert facts["trainable_params"] == sum(p.numel() for p in model.parameters())


def test_matmul_peak_reports_gflops_per_dtype_and_shape_and_restores_threads():
    import torch

    from benchmarks.lib.mfu import best_peak, matmul_peak

    threads = torch.get_num_threads()
    peak = matmul_peak(1, shapes=((8, 8, 8), (4, 8, 16)), repeats=2, min_seconds=0.001)
    assert torch.get_num_threads() == threads
    assert peak["threads"] == 1 and isinstance(peak["load_avg"], float)
    for dtype in ("bfloat16", "float32"):
        assert set(peak[dtype]["by_shape"]) == {"8x8x8", "4x8x16"}
        assert all(v > 0 for v in peak[dtype]["by_shape"].values())
        assert peak[dtype]["gflops"] == max(peak[dtype]["by_shape"].values())
    other = {d: {"gflops": peak[d]["gflops"] * 2} for d in ("bfloat16", "float32")}
    assert best_peak(peak, other) == {d: peak[d]["gflops"] * 2 for d in ("bfloat16", "float32")}


def test_mfu_is_model_flops_per_second_over_the_peak():
    from benchmarks.lib.mfu import flops_per_token, mfu

    facts = {"config": TINY, "trainable_params": 100, "lm_head_every_token": True, "recompute": False}
    run = {"model_facts": facts, "context_tokens": 5, "useful_tokens_per_s": 1e6}
    figures = mfu(run, {"bfloat16": 20.0, "float32": 5.0})
    gflops = flops_per_token(TINY, context=5, trainable_params=100, lm_head_every_token=True) * 1e6 / 1e9
    assert figures["model_gflops"] == round(gflops, 2)
    assert figures["of_bf16_peak"] == round(gflops / 20, 4) and figures["of_fp32_peak"] == round(gflops / 5, 4)
    assert mfu({"useful_tokens_per_s": 1e6}, {"bfloat16": 1, "float32": 1}) == {}  # a run without facts: no figure
    # the recomputed forward of gradient checkpointing is work, not model FLOPs: the same MFU figure
    checkpointed = dict(run, model_facts=dict(facts, recompute=True))
    assert mfu(checkpointed, {"bfloat16": 20.0, "float32": 5.0}) == figures
