"""benchmarks/lib/profile_categories.py: the rules that sort profiler records into the step-time table, on hand-made
records shaped like SmolLM2 + LoRA r16 ones (hidden 576, kv 192, MLP 1536, vocabulary 49,152, 2 labels).
No timing: the profile itself is measured by benchmarks/speed/profile_step.py."""

from __future__ import annotations

import pytest

from benchmarks.lib.profile_categories import (
    CATEGORIES,
    CLIP_RANGE,
    DATA_RANGE,
    FORWARD_RANGE,
    breakdown,
    categorise,
    categorise_one,
    matmul_flops,
    matmul_shapes,
)

KEYS = dict(rank=16, vocab=49152, num_labels=2)
BACKWARD = "autograd::engine::evaluate_function: MmBackward0"


def rec(name, shapes=(), self_us=10.0, ancestors=()):
    return {"name": name, "shapes": [list(s) for s in shapes], "self_us": self_us, "ancestors": tuple(ancestors)}


@pytest.mark.parametrize("record, category", [
    (rec("aten::mm", [(480, 576), (576, 1536)]), "base_matmul"),              # gate/up projection, forward
    (rec("aten::mm", [(480, 1536), (1536, 576)], ancestors=[BACKWARD]), "base_matmul"),  # its input gradient
    (rec("aten::addmm", [(1536,), (480, 576), (576, 192)]), "base_matmul"),   # k/v with a bias
    (rec("aten::mm", [(480, 576), (576, 16)]), "lora_matmul"),                # LoRA A
    (rec("aten::mm", [(480, 16), (16, 1536)]), "lora_matmul"),                # LoRA B
    (rec("aten::mm", [(16, 480), (480, 576)], ancestors=[BACKWARD]), "lora_matmul"),  # A's weight gradient
    (rec("aten::mm", [(480, 576), (576, 49152)]), "head_matmul"),             # LM head
    (rec("aten::mm", [(480, 576), (576, 2)]), "head_matmul"),                 # classification head
    (rec("aten::mm", [(127, 576), (576, 32768)]), "head_matmul"),             # TRL's fused LM head, one chunk
    (rec("aten::addmm_", [(127, 576), (127, 16384), (16384, 576)], ancestors=[BACKWARD]), "head_matmul"),
    (rec("aten::mm", [(2048, 576), (576, 1536)]), "base_matmul"),             # 2,048 tokens: not a vocab chunk
    (rec("aten::linear", [(16, 30, 576), (1536, 576)]), "base_matmul"),       # wrapper: self time by its weight
    (rec("aten::_scaled_dot_product_flash_attention_for_cpu", [(16, 9, 30, 64)]), "attention"),
    (rec("aten::transpose", ancestors=["aten::_scaled_dot_product_flash_attention_for_cpu_backward"]), "attention"),
    (rec("aten::copy_", ancestors=["aten::_to_copy", "aten::to", "aten::linear"]), "casts"),  # autocast
    (rec("aten::_to_copy", ancestors=["aten::to"]), "casts"),
    (rec("aten::copy_", ancestors=["aten::clone"]), "elementwise"),            # a layout copy, not a cast
    (rec("aten::mul", ancestors=["peftkit.forward"]), "elementwise"),
    (rec("aten::rsqrt"), "elementwise"),
    (rec("aten::mul", ancestors=["autograd::engine::evaluate_function: MulBackward0"]), "backward_other"),
    (rec("MulBackward0", ancestors=["autograd::engine::evaluate_function: MulBackward0"]), "backward_other"),
    (rec("autograd::engine::evaluate_function: MulBackward0"), "backward_other"),
    (rec("aten::view", ancestors=[BACKWARD]), "bookkeeping"),
    (rec("aten::empty_strided"), "bookkeeping"),
    (rec("aten::lerp_", ancestors=["Optimizer.step#AdamW.step"]), "optimizer"),
    (rec("aten::_to_copy", ancestors=["Optimizer.step#AdamW.step"]), "optimizer"),  # the optimizer's casts
    (rec("Optimizer.step#AdamW.step"), "optimizer"),                          # its Python loop (self time)
    (rec("aten::linalg_vector_norm", ancestors=[CLIP_RANGE]), "optimizer"),
    (rec(FORWARD_RANGE), "python_forward"),
    (rec(DATA_RANGE), "data"),
    (rec("aten::copy_", ancestors=[DATA_RANGE]), "data"),
])
def test_each_record_goes_to_its_category(record, category):
    assert categorise_one(record, **KEYS) == category


def test_matmul_flops_from_each_kernels_shapes():
    assert matmul_flops("aten::mm", [[480, 576], [576, 1536]]) == 2 * 480 * 576 * 1536
    assert matmul_flops("aten::addmm", [[1536], [480, 576], [576, 1536]]) == 2 * 480 * 576 * 1536
    assert matmul_flops("aten::addmm_", [[127, 576], [127, 4], [4, 576]]) == 2 * 127 * 4 * 576
    assert matmul_flops("aten::bmm", [[9, 30, 64], [9, 64, 30]]) == 2 * 9 * 30 * 64 * 30
    assert matmul_flops("aten::baddbmm", [[9, 30, 30], [9, 30, 64], [9, 64, 30]]) == 2 * 9 * 30 * 64 * 30
    assert matmul_flops("aten::mm", []) == 0  # shapes not recorded: no made-up FLOPs


def test_breakdown_adds_up_to_the_wall_time_and_gives_matmul_rates():
    records = [rec("aten::mm", [(1000, 1000), (1000, 1000)], self_us=20_000.0),  # 2 GFLOP in 20 ms: 100 GFLOP/s
               rec("aten::mm", [(1000, 1000), (1000, 16)], self_us=1_000.0),
               rec("aten::add", self_us=4_000.0), rec(FORWARD_RANGE, self_us=5_000.0)]
    rows = breakdown(categorise(records, **KEYS), wall_us=40_000.0, peak_gflops=400.0)
    by = {r["category"]: r for r in rows}
    assert [r["category"] for r in rows] == list(CATEGORIES)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0, abs=1e-3)
    assert by["base_matmul"]["share"] == 0.5 and by["base_matmul"]["gflops"] == 100.0
    assert by["base_matmul"]["of_peak"] == 0.25
    assert by["lora_matmul"]["gflops"] == pytest.approx(32.0)  # 2 * 1000 * 1000 * 16 flops in 1 ms
    assert by["outside_ops"]["self_ms"] == 10.0 and by["python_forward"]["self_ms"] == 5.0
    assert "gflops" not in by["elementwise"]


def test_operators_overlapping_the_wall_time_still_add_up_to_100_percent():
    records = [rec("aten::add", self_us=30_000.0), rec("aten::mul", self_us=30_000.0)]
    rows = breakdown(categorise(records, **KEYS), wall_us=50_000.0, peak_gflops=400.0)
    assert rows[-1]["category"] == "outside_ops" and rows[-1]["self_ms"] == 0.0
    assert rows[-1]["overlap_us"] == 10_000.0
    assert sum(r["share"] for r in rows) == pytest.approx(1.0, abs=1e-3)


def test_matmul_shapes_groups_calls_and_ranks_by_time():
    records = [rec("aten::mm", [(480, 576), (576, 1536)], self_us=2_000.0)] * 3 + [
        rec("aten::mm", [(480, 576), (576, 16)], self_us=500.0), rec("aten::add", self_us=9_000.0)]
    rows = matmul_shapes(records, **KEYS)
    assert [(r["category"], r["calls"]) for r in rows] == [("base_matmul", 3), ("lora_matmul", 1)]
    assert rows[0]["bmkn"] == [1, 480, 576, 1536] and rows[0]["self_ms"] == 6.0
    assert rows[0]["gflops"] == pytest.approx(2 * 480 * 576 * 1536 / 2_000.0 / 1e3, rel=1e-2)


def test_a_batch_of_rank_many_examples_is_not_mistaken_for_lora():
    # 16 examples of 30 tokens with LoRA rank 16: the wrappers keep the batch dimension, only their weights count
    assert categorise_one(rec("aten::linear", [(16, 30, 576), (1536, 576)]), **KEYS) == "base_matmul"
    assert categorise_one(rec("aten::linear", [(16, 30, 576), (16, 576)]), **KEYS) == "lora_matmul"
    assert categorise_one(rec("aten::matmul", [(16, 30, 576), (576, 1536)]), **KEYS) == "base_matmul"


def test_the_window_is_the_steps_batches_and_the_rest_is_timed_without_the_profiler():
    from benchmarks.lib.profile_runs import unprofiled_time, window_tokens

    # 6 steps: warm-up 2, profiled 3-4, after 5-6; step k lasts ends[k-1] -> ends[k] and trains batch k-1
    ends = [0.0, 10.0, 12.0, 20.0, 30.0, 33.0, 36.0]
    batches = [(100, 120), (40, 40), (50, 60), (70, 80), (60, 60), (80, 80), (90, 90)]  # one collated ahead
    seconds, tokens = unprofiled_time(ends, batches, warm=2, steps=2)
    assert (seconds, tokens) == (2.0 + 3.0 + 3.0, 40 + 60 + 80)  # steps 2, 5, 6; step 1 (warm-up) left out
    window = window_tokens(batches, 2, 2, wall_s=18.0, plain_rate=seconds / tokens, per_token=1e9)
    assert (window["useful_tokens"], window["padded_positions"]) == (50 + 70, 60 + 80)  # batches of steps 3, 4
    assert window["profiler_overhead_s_est"] == pytest.approx(18.0 - 120 * 8.0 / 180, abs=0.01)
    assert window["model_gflops_profiled"] == pytest.approx(120 / 18.0, abs=0.01)
