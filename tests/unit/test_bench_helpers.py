"""The benchmark machinery's arithmetic (benchmarks/common.py, benchmarks/worker.py): ratios, the strided epoch
samples and the epoch-time model. No timing here: speed is measured by the benchmarks themselves."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from common import ratio_stats  # noqa: E402
from worker import StridedEpoch, epoch_padding, epoch_time_model  # noqa: E402


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
