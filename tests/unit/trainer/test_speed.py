"""peftkit.trainer.speed: which TrainingArguments peftkit fills in for speed, and that a recipe's own settings win."""

from __future__ import annotations

import pytest

from peftkit.trainer.speed import speed_defaults


def test_cpu_with_native_bf16_gets_length_grouping_and_bf16_autocast():
    out = speed_defaults({"learning_rate": 3e-4}, has_cuda=False, cpu_has_bf16=True)
    assert out["train_sampling_strategy"] == "group_by_length"
    assert out["bf16"] is True and out["use_cpu"] is True  # transformers refuses bf16 on CPU without use_cpu
    assert out["learning_rate"] == 3e-4


def test_cpu_without_native_bf16_stays_fp32():
    out = speed_defaults({}, has_cuda=False, cpu_has_bf16=False)
    assert out["bf16"] is False and "use_cpu" not in out
    assert out["train_sampling_strategy"] == "group_by_length"


def test_cuda_gets_only_the_sampler_rule():
    out = speed_defaults({}, has_cuda=True, cpu_has_bf16=True)
    # bf16 stays an explicit opt-in on GPU (not measured here); explicit so TRL's bf16=None -> True cannot apply
    assert out == {"train_sampling_strategy": "group_by_length", "bf16": False}


@pytest.mark.parametrize("user", [{"bf16": False}, {"fp16": True}, {"bf16": True, "use_cpu": False}])
def test_a_precision_the_recipe_sets_wins(user):
    out = speed_defaults(user, has_cuda=False, cpu_has_bf16=True)
    for key, value in user.items():
        assert out[key] == value
    if not user.get("bf16"):
        assert not out.get("bf16")


def test_recipe_bf16_on_cpu_gets_use_cpu_filled_in():
    out = speed_defaults({"bf16": True}, has_cuda=False, cpu_has_bf16=False)
    assert out["bf16"] is True and out["use_cpu"] is True


@pytest.mark.parametrize("strategy", ["random", "sequential", "batch_rebalance"])
def test_a_sampler_the_recipe_sets_wins(strategy):
    out = speed_defaults({"train_sampling_strategy": strategy}, has_cuda=False, cpu_has_bf16=True)
    assert out["train_sampling_strategy"] == strategy


def test_quantized_models_keep_their_compute_dtype():
    out = speed_defaults({}, has_cuda=False, cpu_has_bf16=True, quantized=True)
    assert out["bf16"] is False


def test_compile_and_checkpointing_are_never_switched_on():
    out = speed_defaults({}, has_cuda=False, cpu_has_bf16=True)
    assert not out.get("torch_compile") and not out.get("gradient_checkpointing")
    assert speed_defaults({"torch_compile": True}, has_cuda=False, cpu_has_bf16=True)["torch_compile"] is True


def test_packed_sft_keeps_the_sampler_and_still_gets_bf16():
    out = speed_defaults({"packing": True}, has_cuda=False, cpu_has_bf16=True, packing=True)
    assert "train_sampling_strategy" not in out  # packed rows have no padding to group away
    assert out["bf16"] is True


def test_sft_config_resolves_to_peftkit_precision_not_trls_default(tmp_path):
    from trl import SFTConfig

    out = speed_defaults({}, has_cuda=False, cpu_has_bf16=False)
    assert SFTConfig(output_dir=str(tmp_path), **out).bf16 is False  # TRL alone would say True (and refuse on CPU)


def test_input_is_not_modified():
    train = {"learning_rate": 1e-4}
    speed_defaults(train, has_cuda=False, cpu_has_bf16=True)
    assert train == {"learning_rate": 1e-4}


def test_training_arguments_accept_the_defaults(tmp_path):
    from transformers import TrainingArguments

    from peftkit.recipe import TRAIN_DEFAULTS

    out = speed_defaults(dict(TRAIN_DEFAULTS), has_cuda=False, cpu_has_bf16=True)
    args = TrainingArguments(output_dir=str(tmp_path), **out)
    assert args.bf16 and args.use_cpu and args.train_sampling_strategy == "group_by_length"


def test_native_bf16_detection_reads_cpu_flags(monkeypatch, tmp_path):
    import builtins
    import platform

    from peftkit.trainer import speed

    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    real_open = builtins.open
    for flags, expected in (("fpu avx512f avx512_bf16", True), ("fpu avx512f amx_bf16", True),
                            ("fpu avx2 avx512f", False)):
        fake = tmp_path / "cpuinfo"
        fake.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        def fake_open(path, *a, fake=fake, **k):
            return real_open(fake if path == "/proc/cpuinfo" else path, *a, **k)

        monkeypatch.setattr(builtins, "open", fake_open)
        assert speed.cpu_has_native_bf16() is expected
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    assert speed.cpu_has_native_bf16() is False


# ---- length-grouped batches that a resumed run and every DDP rank draw identically ------------------------------


def test_seeded_length_grouping_depends_only_on_seed_and_epoch():
    import random

    import torch

    from peftkit.trainer.speed import EpochSeededLengthGroupedSampler

    lengths = [random.Random(0).randint(1, 60) for _ in range(500)]
    first = EpochSeededLengthGroupedSampler(lengths, batch_size=16, seed=42)
    epoch0 = list(first)
    torch.manual_seed(123)  # the global RNG moved on (dropout, a resumed process): the order must not care
    torch.rand(1000)
    again = EpochSeededLengthGroupedSampler(lengths, batch_size=16, seed=42)
    assert list(again) == epoch0 and sorted(epoch0) == list(range(500))
    again.set_epoch(1)
    epoch1 = list(again)
    assert epoch1 != epoch0 and sorted(epoch1) == list(range(500))
    resumed = EpochSeededLengthGroupedSampler(lengths, batch_size=16, seed=42)
    resumed.set_epoch(1)
    assert list(resumed) == epoch1


def test_seeded_length_grouping_pads_less_than_random_batches():
    import random

    from peftkit.trainer.speed import EpochSeededLengthGroupedSampler

    rng = random.Random(0)
    lengths = [rng.randint(1, 60) for _ in range(2000)]

    def padding(order):
        batches = [order[i:i + 16] for i in range(0, len(order), 16)]
        padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
        return 1 - sum(lengths) / padded

    shuffled = list(range(2000))
    rng.shuffle(shuffled)
    grouped = list(EpochSeededLengthGroupedSampler(lengths, batch_size=16, seed=42))
    assert padding(grouped) < 0.1 < 0.3 < padding(shuffled)


def test_trainer_uses_the_seeded_sampler_only_for_group_by_length(tmp_path):
    import datasets
    import torch
    from transformers import Trainer, TrainingArguments

    from peftkit.trainer.speed import EpochSeededLengthGroupedSampler, with_seeded_length_grouping

    ds = datasets.Dataset.from_dict({"input_ids": [[1] * n for n in range(1, 65)], "labels": [0] * 64})
    cls = with_seeded_length_grouping(Trainer)
    assert cls.__name__ == "Trainer" and issubclass(cls, Trainer)
    for strategy, expected in (("group_by_length", EpochSeededLengthGroupedSampler),
                               ("random", torch.utils.data.RandomSampler)):
        args = TrainingArguments(output_dir=str(tmp_path), train_sampling_strategy=strategy, report_to=[],
                                 per_device_train_batch_size=4, use_cpu=True, data_seed=7)
        trainer = cls(model=torch.nn.Linear(1, 1), args=args, train_dataset=ds)
        sampler = trainer._get_train_sampler()
        assert isinstance(sampler, expected)
        if strategy == "group_by_length":
            assert sampler.seed == 7 and sampler.batch_size == 4


def test_trainer_dataloader_follows_the_epoch_and_resumes_exactly(tmp_path):
    """Through accelerate's loader: set_epoch reaches the sampler, and skipping batches (resume) keeps the order."""
    import datasets
    import torch
    from accelerate import skip_first_batches
    from transformers import Trainer, TrainingArguments

    from peftkit.trainer.speed import EpochSeededLengthGroupedSampler, with_seeded_length_grouping

    ds = datasets.Dataset.from_dict({"input_ids": [[1] * (n % 37 + 1) for n in range(200)], "idx": list(range(200))})
    args = TrainingArguments(output_dir=str(tmp_path), train_sampling_strategy="group_by_length", report_to=[],
                             per_device_train_batch_size=8, use_cpu=True, remove_unused_columns=False)
    trainer = with_seeded_length_grouping(Trainer)(model=torch.nn.Linear(1, 1), args=args, train_dataset=ds,
                                                   data_collator=lambda ex: {"idx": [e["idx"] for e in ex]})

    def order(loader, epoch):
        loader.set_epoch(epoch)
        return [i for batch in loader for i in batch["idx"]]

    epoch1 = order(trainer.get_train_dataloader(), 1)
    expected = EpochSeededLengthGroupedSampler([len(x) for x in ds["input_ids"]], 8, 42)
    expected.set_epoch(1)
    assert epoch1 == list(expected)
    torch.rand(100)  # a resumed process has another global RNG state
    assert order(skip_first_batches(trainer.get_train_dataloader(), 5), 1) == epoch1[40:]


def test_collator_pads_to_multiples_of_8_only_on_cuda():
    from types import SimpleNamespace

    from peftkit.trainer.speed import collator_pad_multiple

    assert collator_pad_multiple(SimpleNamespace(device=SimpleNamespace(type="cuda"))) == 8
    assert collator_pad_multiple(SimpleNamespace(device=SimpleNamespace(type="cpu"))) is None


def test_length_groups_span_the_global_batch_so_ranks_together_see_the_one_process_batches(tmp_path, monkeypatch):
    """2 ranks x batch 2 must train the same examples per optimizer step as 1 process x batch 4."""
    import datasets
    import torch
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler
    from transformers import Trainer, TrainingArguments

    from peftkit.trainer.speed import with_seeded_length_grouping

    ds = datasets.Dataset.from_dict({"input_ids": [[1] * (n % 29 + 1) for n in range(96)], "labels": [0] * 96})

    def sampler(per_device: int, world: int):
        monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: world))
        args = TrainingArguments(output_dir=str(tmp_path), train_sampling_strategy="group_by_length", report_to=[],
                                 per_device_train_batch_size=per_device, use_cpu=True)
        return with_seeded_length_grouping(Trainer)(model=torch.nn.Linear(1, 1), args=args,
                                                    train_dataset=ds)._get_train_sampler()

    one_process = [sorted(b) for b in BatchSampler(sampler(4, 1), 4, drop_last=False)]
    two_ranks = sampler(2, 2)
    assert two_ranks.batch_size == 4
    shards = [list(BatchSamplerShard(BatchSampler(two_ranks, 2, drop_last=False), 2, rank)) for rank in (0, 1)]
    per_step = [sorted(a + b) for a, b in zip(*shards)]
    assert per_step == one_process
