"""One measured training run, in its own process: ``python -m benchmarks.lib.worker SPEC.json RESULT.json``.

Started by benchmarks/lib/common.py (never by hand). Kinds of run:

* ``peftkit_cls``: the real ``peftkit.run.run(recipe)`` on a recipe with overrides, exactly as ``peftkit train``
  runs it; the worker only observes (a timing callback, a collator wrapper that counts tokens).
* ``hf_cls``: the baseline a user following the Hugging Face text-classification tutorial would write:
  AutoModelForSequenceClassification + LoraConfig(SEQ_CLS) + tokenizer truncation + DataCollatorWithPadding +
  plain Trainer defaults (fp32, random sampler). Hyperparameters (lr, batch size, epochs, LoRA) and the data
  subset are read from the same recipe, so both arms train on the same examples with the same settings.
* ``trl_sft``: plain ``trl.SFTTrainer`` on SST-2 as prompt -> label word, packing off or on (from the spec).
* ``peftkit_sft``: peftkit's own SFT path (``peftkit.run.run`` on a generative recipe), observed the same way.

Observation only: the timing covers ``Trainer.train`` from ``on_train_begin`` to ``on_train_end`` (compile
warm-up included, model loading and tokenization excluded and reported separately). With ``stride: k`` the
training loop runs every k-th batch of the real epoch order (offset ``stride_offset``), so a few steps see the
same mix of lengths as the whole epoch; the full epoch's padding is computed from the same order.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.lib.common import local_data

REPO = Path(__file__).resolve().parents[2]


def rss_mb(who=resource.RUSAGE_SELF) -> float:
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)  # Linux: kilobytes


class TreeRss:
    """Samples the RSS of this process plus its child processes (torch.compile's compile workers) every 0.5 s.

    ``ru_maxrss`` is exact for this process alone; children forked from it would report the parent's pages as
    their own, so the tree's peak is sampled instead.
    """

    def __init__(self, interval: float = 0.5):
        import threading

        import psutil

        self.peak = 0
        self._stop = threading.Event()
        self._me = psutil.Process()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            total = 0
            try:
                procs = [self._me, *self._me.children(recursive=True)]
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except Exception:  # a child that just exited
                        pass
            except Exception:
                pass
            self.peak = max(self.peak, total)
            self._stop.wait(self._interval)

    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


TREE = None


# ---------------------------------------------------------------------------------------------
# Observation: token counting, strided epochs, timing
# ---------------------------------------------------------------------------------------------


class CountingCollator:
    """Wraps a collator: counts real tokens (sum of example lengths) and padded positions per training batch."""

    def __init__(self, inner, pad_to_multiple_of: int | None = None):
        self.inner = inner
        if pad_to_multiple_of is not None and hasattr(inner, "pad_to_multiple_of"):
            inner.pad_to_multiple_of = pad_to_multiple_of or None
        self.counting = True
        self.batches = self.useful = self.positions = 0
        self.squares = 0  # sum of squared example lengths: the mean context a token attends over (MFU)
        self.per_batch: list[tuple[int, int]] = []  # (useful tokens, padded positions) of each training batch

    def __call__(self, examples):
        batch = self.inner(examples)
        if self.counting:
            useful, positions = sum(len(e["input_ids"]) for e in examples), int(batch["input_ids"].numel())
            self.batches += 1
            self.useful += useful
            self.positions += positions
            self.squares += sum(len(e["input_ids"]) ** 2 for e in examples)
            self.per_batch.append((useful, positions))
        return batch

    def __getattr__(self, name):
        return getattr(self.inner, name)


class StridedEpoch:
    """A sampler that yields every ``stride``-th batch (from ``offset``) of the wrapped sampler's epoch order.

    ``by_size``: pick every ``stride``-th batch in order of padded size instead (full batches only), trained in
    their epoch order. Length-grouped epochs put the few long examples into a few batches, which plain striding
    can miss entirely; picking along the sizes measures short and long batches alike, so the time-vs-positions
    model of the epoch (:func:`epoch_time_model`) is fitted over the whole range it is used on.
    """

    def __init__(self, inner, batch_size: int, stride: int, offset: int, lengths: list[int], pad_multiple: int | None,
                 by_size: bool = False):
        self.inner, self.batch_size, self.stride, self.offset = inner, batch_size, stride, offset
        self.lengths, self.pad_multiple, self.by_size = lengths, pad_multiple or 1, by_size
        self.full_epoch: dict[str, Any] = {}
        n = len(lengths)
        self.total_batches = -(-n // batch_size)
        if by_size:
            self._len = len(range(n // batch_size)[offset::stride]) * batch_size
        else:
            kept = list(range(self.total_batches))[offset::stride]
            self._len = sum(min(batch_size, n - b * batch_size) for b in kept)

    def __len__(self):
        return self._len

    def __iter__(self):
        order = list(iter(self.inner))
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        self.full_epoch = epoch_padding(batches, self.lengths, self.pad_multiple)
        if self.by_size:
            full = [b for b in range(len(batches)) if len(batches[b]) == self.batch_size]
            by_positions = sorted(full, key=lambda b: self.full_epoch["batch_positions"][b])
            chosen = sorted(by_positions[self.offset::self.stride])
        else:
            chosen = list(range(len(batches)))[self.offset::self.stride]
        return iter([i for b in chosen for i in batches[b]])


def epoch_padding(batches: list[list[int]], lengths: list[int], pad_multiple: int) -> dict[str, Any]:
    useful = positions = 0
    per_batch = []
    for b in batches:
        longest = max(lengths[i] for i in b)
        longest = -(-longest // pad_multiple) * pad_multiple
        useful += sum(lengths[i] for i in b)
        positions += longest * len(b)
        per_batch.append(longest * len(b))
    return {"batches": len(batches), "useful_tokens": useful, "positions": positions, "batch_positions": per_batch,
            "padding_fraction": round(1 - useful / positions, 4) if positions else None}


def epoch_time_model(step_times: list[float], step_positions: list[int], epoch_positions: list[int]) -> dict | None:
    """Predict the whole epoch's time from the measured steps: t(step) = a + b * padded positions, least squares
    over the steps after the first (the first carries one-off warm-up, added back once). None if too few steps."""
    xs, ys = step_positions[1:], step_times[1:]
    if len(xs) < 4 or len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    a = my - b * mx
    if b <= 0 or a < 0:  # noise made the line meaningless: fall back to time proportional to positions
        a, b = 0.0, sum(ys) / sum(xs)
    warmup = max(0.0, step_times[0] - (a + b * step_positions[0]))
    return {"intercept_s": round(a, 4), "s_per_position": round(b, 6), "warmup_s": round(warmup, 2),
            "epoch_s": round(warmup + sum(a + b * x for x in epoch_positions), 1)}


class Observer:
    """Everything measured about one run; installed on a Trainer by :func:`observe`."""

    def __init__(self):
        self.t_begin = self.t_end = None
        self.step_ends: list[float] = []
        self.rss_train = None
        self.train_output = None
        self.sampler: StridedEpoch | None = None
        self.collator: CountingCollator | None = None
        self.eval_s = None
        self.trainer_args = None
        self.model = None
        self.trainer = None


def make_callback(obs: Observer):
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            obs.t_begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            obs.step_ends.append(time.perf_counter())

        def on_train_end(self, args, state, control, **kwargs):
            obs.t_end = time.perf_counter()
            obs.rss_train = rss_mb()
            if obs.collator is not None:
                obs.collator.counting = False  # evaluation batches are not training tokens

    return Timing()


def observe(trainer, spec: dict[str, Any], obs: Observer) -> None:
    """Attach the observers to a built Trainer (same for every arm)."""
    obs.trainer_args = trainer.args
    obs.model = trainer.model
    obs.trainer = trainer
    obs.collator = CountingCollator(trainer.data_collator, spec.get("pad_to_multiple_of"))
    trainer.data_collator = obs.collator
    trainer.add_callback(make_callback(obs))
    stride = spec.get("stride")
    if stride:
        original = trainer._get_train_sampler

        def strided_sampler(*args, **kwargs):
            inner = original(*args, **kwargs)
            ds = trainer.train_dataset
            lengths = [len(ids) for ids in ds["input_ids"]]
            pad = getattr(obs.collator.inner, "pad_to_multiple_of", None)
            bs = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
            obs.sampler = StridedEpoch(inner, bs, stride, spec.get("stride_offset", 0), lengths, pad,
                                       by_size=spec.get("stride_by_size", False))
            return obs.sampler

        trainer._get_train_sampler = strided_sampler
    train = trainer.train

    def timed_train(*args, **kwargs):
        obs.train_output = train(*args, **kwargs)
        return obs.train_output

    trainer.train = timed_train


def summarize(obs: Observer, spec: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    import torch

    train_s = obs.t_end - obs.t_begin
    steps = len(obs.step_ends)
    gaps = [b - a for a, b in zip([obs.t_begin, *obs.step_ends], obs.step_ends)]
    steady = gaps[2:] if len(gaps) > 4 else gaps
    c = obs.collator
    metrics = obs.train_output.metrics if obs.train_output is not None else {}
    out = {
        "name": spec["name"], "kind": spec["kind"],
        "train_s": round(train_s, 2), "steps": steps,
        "steps_per_s": round(steps / train_s, 4),
        "useful_tokens": c.useful, "padded_positions": c.positions, "batches": c.batches,
        "padding_fraction": round(1 - c.useful / c.positions, 4) if c.positions else None,
        "useful_tokens_per_s": round(c.useful / train_s, 2),
        "first_step_s": round(gaps[0], 2) if gaps else None,
        "steady_step_s_median": round(sorted(steady)[len(steady) // 2], 3) if steady else None,
        "steady_useful_tokens_per_s": None,
        "train_loss": metrics.get("train_loss"),
        "peak_rss_train_mb": obs.rss_train,
        "peak_rss_mb": rss_mb(),
        "tree_peak_rss_mb_sampled": TREE.peak_mb() if TREE is not None else None,
        "torch_threads": torch.get_num_threads(),
        "eval_s": round(obs.eval_s, 2) if obs.eval_s is not None else None,
        # the logged training losses, step by step (every step with train.logging_steps=1): arms that should compute
        # the same thing can be compared on them
        "losses": [e["loss"] for e in obs.trainer.state.log_history if "loss" in e] if obs.trainer else [],
    }
    if obs.model is not None:  # what the model FLOPs per token are counted from (benchmarks/lib/mfu.py)
        from benchmarks.lib.mfu import model_facts

        out["model_facts"] = model_facts(obs.model, lm_head_every_token=spec["kind"] in ("trl_sft", "peftkit_sft"),
                                         recompute=bool(getattr(obs.trainer_args, "gradient_checkpointing", False)))
        out["context_tokens"] = round(c.squares / c.useful, 1) if c.useful else None
    if len(gaps) > 4 and c.batches:
        out["steady_useful_tokens_per_s"] = round(c.useful / c.batches / out["steady_step_s_median"], 2)
    if "torch._dynamo" in sys.modules:
        from torch._dynamo.utils import counters

        out["dynamo"] = {"unique_graphs": counters["stats"].get("unique_graphs", 0),
                         "frames_ok": counters["frames"].get("ok", 0),
                         "recompiles": sum(counters["recompiles"].values()) if "recompiles" in counters else None,
                         "graph_breaks": sum(counters["graph_break"].values())}
    if obs.sampler is not None:
        fe = obs.sampler.full_epoch
        out["stride"] = obs.sampler.stride
        out["epoch_batches"] = fe.get("batches")
        out["epoch_padding_fraction"] = fe.get("padding_fraction")
        out["epoch_time_estimate_s"] = round(train_s / steps * fe["batches"], 1) if steps else None
        out["epoch_useful_tokens"] = fe["useful_tokens"]
        if len(c.per_batch) == len(gaps):
            model = epoch_time_model(gaps, [p for _, p in c.per_batch], fe["batch_positions"])
            if model:
                out["epoch_model"] = model
                out["epoch_time_model_s"] = model["epoch_s"]
                out["epoch_useful_tokens_per_s_model"] = round(fe["useful_tokens"] / model["epoch_s"], 2)
    out.update(extra)
    return out


# ---------------------------------------------------------------------------------------------
# Arms
# ---------------------------------------------------------------------------------------------


def peftkit_recipe(spec: dict[str, Any]):
    """The arm's recipe as `peftkit train RECIPE OVERRIDES` would load it, in a throwaway run folder."""
    from peftkit.recipe import load_recipe

    overrides = [f"output_dir={spec['workdir']}/run", "overwrite_output_dir=true", 'train.save_strategy="no"',
                 f"evaluate.enabled={'true' if spec.get('evaluate') else 'false'}", *local_data(spec["recipe"]),
                 *spec.get("overrides", [])]
    return load_recipe(REPO / spec["recipe"], overrides)


def observed_builder(build, spec: dict[str, Any], obs: Observer):
    """peftkit's trainer builder, with the observers attached to the Trainer it returns."""

    def build_observed(*args, **kwargs):
        trainer = build(*args, **kwargs)
        observe(trainer, spec, obs)
        return trainer

    return build_observed


def run_peftkit_cls(spec: dict[str, Any]) -> dict[str, Any]:
    import peftkit.run as run_mod
    import peftkit.tasks.classification as train_mod

    obs = Observer()
    recipe = peftkit_recipe(spec)
    evaluate = train_mod.evaluate

    def timed_evaluate(*args, **kwargs):
        t = time.perf_counter()
        result = evaluate(*args, **kwargs)
        obs.eval_s = time.perf_counter() - t
        return result

    train_mod.build_trainer = observed_builder(train_mod.build_trainer, spec, obs)
    train_mod.evaluate = timed_evaluate
    started = time.perf_counter()
    metrics = run_mod.run(recipe)
    args_used = training_args_summary(obs.trainer_args)
    return summarize(obs, spec, {"accuracy": metrics.get("accuracy"), "eval_examples": metrics.get("support_total"),
                                 "process_internal_s": round(time.perf_counter() - started, 1),
                                 "training_arguments": args_used})


def training_args_summary(args) -> dict[str, Any]:
    """The speed-relevant TrainingArguments the observed Trainer used (after peftkit's speed defaults)."""
    keys = ("train_sampling_strategy", "bf16", "fp16", "use_cpu", "torch_compile", "gradient_checkpointing",
            "per_device_train_batch_size", "learning_rate", "num_train_epochs", "max_steps")
    return {k: getattr(args, k, None) for k in keys}


def run_hf_cls(spec: dict[str, Any]) -> dict[str, Any]:
    """The tutorial baseline. Only the data subset and the hyperparameters come from peftkit's recipe."""
    import numpy as np
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from peftkit.data.classification import load_classification_data
    from peftkit.model.packaged import resolve_model_path
    from peftkit.recipe import load_recipe

    recipe = load_recipe(REPO / spec["recipe"], spec.get("overrides", []))
    t = recipe.train
    set_seed(recipe.seed)
    started = time.perf_counter()
    # -- data: the very same examples peftkit trains and evaluates on
    data = load_classification_data(recipe.data, recipe.seed)
    labels = data.label_names
    path = resolve_model_path(recipe.model.name_or_path)
    # -- the tutorial ---------------------------------------------------------------------------
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def preprocess(batch):  # the tutorial's truncation, at the recipe's max_length so both arms see the same tokens
        return tokenizer(batch["text"], truncation=True, max_length=recipe.data.max_length)

    train_ds = Dataset.from_dict({"text": data.splits["train"]["text"], "label": data.splits["train"]["label"]})
    train_ds = train_ds.map(preprocess, batched=True, remove_columns=["text"])
    eval_ds = Dataset.from_dict({"text": data.splits["eval"]["text"], "label": data.splits["eval"]["label"]})
    eval_ds = eval_ds.map(preprocess, batched=True, remove_columns=["text"])
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    model.config.pad_token_id = tokenizer.pad_token_id
    a = recipe.adapter
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=a.r, lora_alpha=a.lora_alpha,
                                             lora_dropout=a.lora_dropout, target_modules=a.target_modules))

    def compute_metrics(eval_pred):
        logits, label_ids = eval_pred
        return {"accuracy": float((np.argmax(logits, axis=-1) == label_ids).mean())}

    args = TrainingArguments(
        output_dir=f"{spec['workdir']}/hf", learning_rate=t["learning_rate"],
        per_device_train_batch_size=t["per_device_train_batch_size"], per_device_eval_batch_size=16,
        num_train_epochs=t["num_train_epochs"], max_steps=t.get("max_steps", -1),
        eval_strategy="no", save_strategy="no", report_to="none", seed=recipe.seed,
        **spec.get("hf_extra_args", {}))
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=compute_metrics)
    setup_s = time.perf_counter() - started
    obs = Observer()
    observe(trainer, spec, obs)
    trainer.train()
    extra: dict[str, Any] = {"setup_s": round(setup_s, 1)}
    if spec.get("evaluate"):
        # Same predictions as the tutorial's trainer.evaluate(); the dev set is sorted by length first only to
        # spend less benchmark time on padding (for right padding the logits do not depend on the batch).
        lengths = [len(ids) for ids in eval_ds["input_ids"]]
        by_length = eval_ds.select(sorted(range(len(eval_ds)), key=lengths.__getitem__))
        t0 = time.perf_counter()
        metrics = trainer.evaluate(by_length)
        obs.eval_s = time.perf_counter() - t0
        extra.update(accuracy=metrics["eval_accuracy"], eval_examples=len(eval_ds))
    return summarize(obs, spec, extra)


def sft_examples(spec: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """SST-2 as prompt/completion pairs (the same prompt and label words as peftkit's generative recipe)."""
    from peftkit.data.classification import load_classification_data
    from peftkit.recipe import DataSection

    section = DataSection(train_file=str(REPO / spec["train_file"]), eval_file=str(REPO / spec["eval_file"]),
                          text_column="sentence", label_column="label", label_names=["negative", "positive"],
                          max_train_samples=spec["max_train_samples"], max_eval_samples=spec.get("max_eval_samples"))
    data = load_classification_data(section, 42)
    words = [" negative", " positive"]

    def pairs(split):
        s = data.splits[split]
        return [{"prompt": f"Review: {x}\nSentiment:", "completion": words[y]} for x, y in zip(s["text"], s["label"])]

    return pairs("train"), pairs("eval")


def run_trl_sft(spec: dict[str, Any]) -> dict[str, Any]:
    """Plain TRL: SFTTrainer with its defaults, packing as the spec says; LoRA as in peftkit's recipes."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    from peftkit.model.packaged import resolve_model_path

    set_seed(42)
    started = time.perf_counter()
    train_rows, eval_rows = sft_examples(spec)
    path = resolve_model_path(spec["model"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    cfg = SFTConfig(output_dir=f"{spec['workdir']}/sft", learning_rate=spec["learning_rate"],
                    per_device_train_batch_size=spec["batch_size"], num_train_epochs=1,
                    max_length=spec["max_length"], packing=spec.get("packing", False),
                    save_strategy="no", report_to="none", seed=42, logging_steps=10,
                    # TRL's defaults are bf16=True and gradient checkpointing on; on a CPU, SFTConfig refuses bf16
                    # with "You need to assign use_cpu": the user adds use_cpu=True, as the message says.
                    use_cpu=not torch.cuda.is_available(), **spec.get("sft_extra", {}))
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(train_rows),
                         processing_class=tokenizer,
                         peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    setup_s = time.perf_counter() - started
    obs = Observer()
    observe(trainer, spec, obs)
    trainer.train()
    extra = {"setup_s": round(setup_s, 1), "packing": cfg.packing, "padding_free": cfg.padding_free, "bf16": cfg.bf16,
             "gradient_checkpointing": bool(cfg.gradient_checkpointing)}
    if spec.get("evaluate"):
        t0 = time.perf_counter()
        extra["accuracy"] = label_word_accuracy(trainer.model, tokenizer, eval_rows)
        obs.eval_s = time.perf_counter() - t0
        extra["eval_examples"] = len(eval_rows)
    return summarize(obs, spec, extra)


def label_word_accuracy(model, tokenizer, rows: list[dict]) -> float:
    """Accuracy of picking the higher-scoring label word after each prompt (both words are one token)."""
    import torch

    words = [" negative", " positive"]
    word_ids = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words]
    model.eval()
    correct = 0
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["prompt"]))
    with torch.no_grad():
        for start in range(0, len(order), 32):
            chunk = [rows[i] for i in order[start:start + 32]]
            enc = [tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in chunk]
            width = max(map(len, enc))
            ids = torch.full((len(enc), width), tokenizer.pad_token_id or 0)
            mask = torch.zeros((len(enc), width), dtype=torch.long)
            for j, e in enumerate(enc):
                ids[j, :len(e)] = torch.tensor(e)
                mask[j, :len(e)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits
            last = logits[torch.arange(len(enc)), mask.sum(1) - 1][:, word_ids]
            for j, r in enumerate(chunk):
                correct += int(words[int(last[j].argmax())] == r["completion"])
    return correct / len(rows)


def run_peftkit_sft(spec: dict[str, Any]) -> dict[str, Any]:
    """peftkit's SFT path: its run() on a generative-classification recipe, observed."""
    import peftkit.run as run_mod
    import peftkit.tasks.causal as sft_mod

    obs = Observer()
    recipe = peftkit_recipe(spec)
    sft_mod.build_trainer = observed_builder(sft_mod.build_trainer, spec, obs)
    metrics = run_mod.run(recipe)
    return summarize(obs, spec, {"accuracy": metrics.get("accuracy"), "packing": recipe.train.get("packing")})


KINDS = {"peftkit_cls": run_peftkit_cls, "hf_cls": run_hf_cls, "trl_sft": run_trl_sft, "peftkit_sft": run_peftkit_sft}


def main() -> None:
    global TREE
    TREE = TreeRss()
    spec = json.loads(Path(sys.argv[1]).read_text())
    os.chdir(REPO)
    result = KINDS[spec["kind"]](spec)
    Path(sys.argv[2]).write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
