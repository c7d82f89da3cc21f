"""Hostile input, the classes that failed a hostile review (no traceback, no silent wrong success, no unclear message).

Every case goes through the real CLI entry point (`peftkit.cli.main`, in-process for speed) and is judged the
same way (`judge`):

* a case that must fail: exit non-zero with ONE stderr line ``peftkit: error: ...`` containing the expected words,
  no traceback, and every file that existed before is byte-identical afterwards;
* a case that is legal but almost surely a mistake: exit 0 and a ``peftkit: warning: ...`` line with the words;
* cases marked ``early`` must fail before any model or tokenizer is loaded (a tripwire replaces the loader).

Outcomes are sorted into the issue's words: ``traceback``, ``silent`` (exit 0, or a model was loaded, where an
error was due), ``unclear`` (an error, but not one line naming what is wrong), ``damaged`` (files changed) and
``ok``. ``python tests/helpers/hostile_counts.py`` runs this file and prints the counts by class; with
``HOSTILE_COUNTING=1`` the tripwire records instead of raising (how the "before" counts were taken on the old code).

Real processes (signals, what the terminal shows) are in tests/e2e/test_terminal_output_and_signals.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

import peftkit.model.base
from peftkit.cli import main
from tests.conftest import tiny_recipe, write_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COUNTING = os.environ.get("HOSTILE_COUNTING") == "1"
REPORT = os.environ.get("HOSTILE_REPORT")


# ---------------------------------------------------------------------------------------------
# What a case expects, and how an outcome is judged
# ---------------------------------------------------------------------------------------------


@dataclass
class Err:
    """Must fail with one `peftkit: error:` line containing every one of `words`."""

    words: tuple[str, ...]
    early: bool = True  # before any model or tokenizer is loaded

    def __init__(self, *words: str, early: bool = True):
        self.words, self.early = words, early


@dataclass
class Warn:
    """Must succeed and say `peftkit: warning:` with `words` (legal, but almost surely a mistake)."""

    words: tuple[str, ...]
    early: bool = False

    def __init__(self, *words: str):
        self.words = words


@dataclass
class Ok:
    """Must succeed; `words` must appear in the output (stdout or stderr)."""

    words: tuple[str, ...]
    early: bool = False

    def __init__(self, *words: str):
        self.words = words


class ModelLoaded(BaseException):
    """The tripwire: a model or tokenizer was loaded where the error was due before."""


@dataclass
class Outcome:
    rc: int | None
    out: str
    err: str
    exception: BaseException | None = None
    model_loaded: bool = False
    changed: list[str] = field(default_factory=list)


def judge(expect, outcome: Outcome) -> tuple[str, str]:
    """(class, why): traceback | silent | unclear | damaged | ok."""
    err_lines = [line for line in outcome.err.splitlines() if line.strip()]
    if outcome.exception is not None and not isinstance(outcome.exception, ModelLoaded):
        return "traceback", f"{type(outcome.exception).__name__}: {str(outcome.exception)[:300]}"
    if "Traceback (most recent call last)" in outcome.err:
        return "traceback", outcome.err[-300:]
    if isinstance(expect, Err):
        if isinstance(outcome.exception, ModelLoaded) or (outcome.model_loaded and expect.early and outcome.rc == 0):
            return "silent", "went on to load the model where the error was due before"
        if outcome.rc == 0:
            return "silent", "exit 0 where an error was due"
    if outcome.changed:
        return "damaged", f"changed: {outcome.changed[:5]}"
    if isinstance(expect, Err):
        errors = [line for line in err_lines if line.startswith("peftkit: error: ")]
        if len(err_lines) != 1 or len(errors) != 1:
            return "unclear", f"not one error line: {err_lines[-4:]}"
        missing = [w for w in expect.words if w not in errors[0]]
        if missing:
            return "unclear", f"{errors[0][:400]!r} lacks {missing}"
        if expect.early and outcome.model_loaded:
            return "silent", "the error came only after a model was loaded"
        return "ok", errors[0]
    if outcome.rc != 0:
        return ("unclear" if any(line.startswith("peftkit: error: ") for line in err_lines) else "traceback",
                f"failed: {err_lines[-3:]}")
    text = outcome.out + outcome.err
    if isinstance(expect, Warn):
        warnings = [line for line in text.splitlines() if line.startswith("peftkit: warning: ")]
        if not any(all(w in line for w in expect.words) for line in warnings):
            return "silent", f"no warning with {expect.words}: {warnings}"
        return "ok", warnings[0]
    missing = [w for w in expect.words if w not in text]
    return ("unclear", f"output lacks {missing}") if missing else ("ok", "")


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*")) if not p.name.startswith(".peftkit-lock")}


def changed_files(before: dict[str, str], after: dict[str, str], allowed: Callable[[str], bool]) -> list[str]:
    """Files that existed before and differ or vanished (new files are allowed where `allowed` says so)."""
    gone_or_changed = [name for name, digest in before.items() if after.get(name) != digest]
    new = [name for name in after if name not in before and not allowed(name)]
    return gone_or_changed + new


def record(case_id: str, category: str, verdict: str, why: str) -> None:
    if REPORT:
        with open(REPORT, "a", encoding="utf-8") as f:
            f.write(json.dumps({"case": case_id, "category": category, "verdict": verdict, "why": why}) + "\n")


# ---------------------------------------------------------------------------------------------
# The context every case builds on: the tiny model, small SST-2 files, and finished run folders
# ---------------------------------------------------------------------------------------------


@dataclass
class Ctx:
    tmp: Path
    model: Path
    data: dict[str, Path]
    good_recipe: Path
    good_run: Path
    two_checkpoints: tuple[Path, Path] | None = None

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path

    def recipe_dict(self, **sections) -> dict:
        recipe = tiny_recipe(self.model, self.data, self.tmp / "out")
        for key, value in sections.items():
            if isinstance(value, dict):
                recipe.setdefault(key, {}).update(value)
            else:
                recipe[key] = value
        return recipe

    def recipe(self, **sections) -> Path:
        return write_recipe(self.tmp / "recipe.yaml", self.recipe_dict(**sections))

    def raw_recipe(self, text: str) -> Path:
        """A recipe written as YAML text, with {model}, {train}, {dev}, {out} filled in."""
        return self.write("recipe.yaml", text.format(model=self.model, train=self.data["train"],
                                                     dev=self.data["dev"], out=self.tmp / "out"))

    def model_folder(self, drop: tuple[str, ...] = (), add: dict[str, bytes] | None = None,
                     config: dict | None = None) -> Path:
        folder = self.tmp / "model"
        if not folder.exists():
            shutil.copytree(self.model, folder)
        for name in drop:
            (folder / name).unlink()
        for name, content in (add or {}).items():
            (folder / name).write_bytes(content)
        if config is not None:
            merged = json.loads((folder / "config.json").read_text()) | config
            (folder / "config.json").write_text(json.dumps(merged))
        return folder

    def run_copy(self, source: Path | None = None, recipe: Path | None = None) -> tuple[Path, Path]:
        """(recipe, run folder): a copy of a finished run inside tmp, its recorded recipe rewritten to the copy."""
        run = Path(shutil.copytree(source or self.good_run, self.tmp / "run"))
        recipe_dict = yaml.safe_load((recipe or self.good_recipe).read_text())
        recipe_dict["output_dir"] = str(run)
        recorded = yaml.safe_load((run / "recipe.yaml").read_text())
        recorded["output_dir"] = str(run)
        write_recipe(run / "recipe.yaml", recorded)
        return write_recipe(self.tmp / "run-recipe.yaml", recipe_dict), run


def train(c: Ctx, *extra: str, **sections) -> list[str]:
    return ["train", str(c.recipe(**sections)), *extra]


def validate(c: Ctx, *extra: str, **sections) -> list[str]:
    return ["validate", str(c.recipe(**sections)), *extra]


CASES: list[tuple[str, str, Callable[[Ctx], list[str]], object]] = []


def case(case_id: str, category: str, build: Callable[[Ctx], list[str]], expect) -> None:
    CASES.append((case_id, category, build, expect))


def both(case_id: str, category: str, expect, **sections) -> None:
    """The same recipe through `validate` and `train`: validate must not say OK to what train rejects."""
    case(f"validate-{case_id}", category, lambda c: validate(c, **sections), expect)
    case(f"train-{case_id}", category, lambda c: train(c, **sections), expect)


def both_raw(case_id: str, category: str, text: str, expect) -> None:
    case(f"validate-{case_id}", category, lambda c: ["validate", str(c.raw_recipe(text))], expect)
    case(f"train-{case_id}", category, lambda c: ["train", str(c.raw_recipe(text))], expect)


# ---------------------------------------------------------------------------------------------
# Silent wrong success: recipes
# ---------------------------------------------------------------------------------------------

BASE_YAML = """\
output_dir: {out}
model:
  name_or_path: {model}
  attn_implementation: eager
adapter:
  r: 4
data:
  train_file: {train}
  eval_file: {dev}
  text_column: sentence
  label_names: [negative, positive]
  max_length: 32
train:
  max_steps: 2
  per_device_train_batch_size: 8
  report_to: []
  save_strategy: "no"
  disable_tqdm: true
"""

both_raw("duplicate-key-in-train", "silent", BASE_YAML + "  learning_rate: 1e-4\n  learning_rate: 1e-3\n",
         Err("key 'train.learning_rate' appears twice", "line"))
both_raw("duplicate-top-level-key", "silent", BASE_YAML + "output_dir: {out}-second\n",
         Err("key 'output_dir' appears twice", "line"))
both_raw("duplicate-section", "silent", BASE_YAML + "adapter:\n  r: 8\n", Err("key 'adapter' appears twice"))
both_raw("duplicate-key-in-adapter", "silent", BASE_YAML.replace("  r: 4\n", "  r: 4\n  lora_alpha: 8\n  r: 16\n"),
         Err("key 'adapter.r' appears twice"))
both_raw("duplicate-key-in-data", "silent",
         BASE_YAML.replace("  max_length: 32\n", "  max_length: 32\n  text_column: text\n"),
         Err("key 'data.text_column' appears twice"))

both("zero-epochs", "silent", Err("'train.num_train_epochs' must be positive"),
     train={"num_train_epochs": 0, "max_steps": -1})
both("negative-epochs", "silent", Err("'train.num_train_epochs' must be positive"),
     train={"num_train_epochs": -2, "max_steps": -1})
both("max-steps-zero", "silent", Err("'train.max_steps' is 0", "nothing"), train={"max_steps": 0})
both("max-steps-negative-and-zero-epochs", "silent", Err("'train.num_train_epochs' must be positive"),
     train={"max_steps": -5, "num_train_epochs": 0.0})
case("train-tiny-epoch-fraction", "silent", lambda c: train(c, train={"max_steps": -1, "num_train_epochs": 0.01}),
     Warn("train.num_train_epochs", "of the training data"))

both("nan-learning-rate", "silent", Err("'train.learning_rate' must be a finite positive number"),
     train={"learning_rate": float("nan")})
both("infinite-learning-rate", "silent", Err("'train.learning_rate' must be a finite positive number"),
     train={"learning_rate": float("inf")})
for name in ("adamw_fast", "Adam", "sgdd"):
    both(f"unknown-optimizer-{name}", "silent", Err(f"'train.optim' {name!r} is not an optimizer"),
         train={"optim": name})
for name in ("cosine_warm", "linearr"):
    both(f"unknown-scheduler-{name}", "silent", Err(f"'train.lr_scheduler_type' {name!r} is not a scheduler"),
         train={"lr_scheduler_type": name})
for value, bad in ((["tensorbord"], "tensorbord"), ("wandbb", "wandbb"), (["tensorboard", "mlfow"], "mlfow")):
    both(f"unknown-report-to-{bad}", "silent", Err(f"'train.report_to' {bad!r} is not"),
         train={"report_to": value})
both("target-modules-match-nothing", "silent", Err("'adapter.target_modules'", "match no module", "q_proj"),
     adapter={"target_modules": ["query", "value"]})
both("target-module-typo", "silent", Err("'adapter.target_modules'", "match no module"),
     adapter={"target_modules": "q_projj"})
both("max-length-beyond-positions", "silent", Err("'data.max_length' 512", "256 positions"),
     data={"max_length": 512})

# ---------------------------------------------------------------------------------------------
# Silent wrong success: data files
# ---------------------------------------------------------------------------------------------

TSV = "sentence\tlabel\n" + "".join(f"film number {i}\t{i % 2}\n" for i in range(12))


def data_case(case_id: str, content: str, expect, suffix: str = ".tsv", **data) -> None:
    def build(command):
        return lambda c: [command, str(c.recipe(data={"train_file": str(c.write(f"train{suffix}", content)),
                                                      **data}))]
    case(f"validate-{case_id}", "silent", build("validate"), expect)
    case(f"train-{case_id}", "silent", build("train"), expect)


data_case("header-repeats-a-column", "sentence\tlabel\tsentence\n" + "a\t1\tb\n" * 4 + "c\t0\td\n" * 4,
          Err("train.tsv", "column 'sentence' appears twice in the header"))
data_case("csv-header-repeats-a-column", "sentence,label,label\n" + "a,1,0\n" * 4 + "c,0,1\n" * 4,
          Err("train.csv", "column 'label' appears twice in the header"), suffix=".csv")
data_case("single-class-in-training-data", "sentence\tlabel\n" + "good film\t1\n" * 8,
          Err("train.tsv", "one class", "negative"))
data_case("single-class-named", "sentence\tlabel\n" + "good film\tpositive\n" * 8,
          Err("train.tsv", "one class"))
data_case("label-name-typo", "sentence\tlabel\n" + "good film\tpositive\nbad film\tnegative\n" * 4,
          Err("'postive'", "no row", "train.tsv"), label_names=["negative", "postive"])
data_case("label-name-without-rows", TSV, Err("'neutral'", "no row", "train.tsv"),
          label_names=["negative", "positive", "neutral"])
data_case("two-of-three-labels-unused", TSV.replace("\t1\n", "\t0\n"), Err("train.tsv", "one class"),
          label_names=["negative", "positive", "neutral"])

# ---------------------------------------------------------------------------------------------
# Silent wrong success and tracebacks: model folders
# ---------------------------------------------------------------------------------------------


def model_case(case_id: str, category: str, make: Callable[[Ctx], Path], expect) -> None:
    case(f"validate-model-{case_id}", category,
         lambda c: validate(c, model={"name_or_path": str(make(c))}), expect)
    case(f"train-model-{case_id}", category,
         lambda c: train(c, model={"name_or_path": str(make(c))}), expect)


def weights(c: Ctx) -> bytes:
    return (c.model / "model.safetensors").read_bytes()


BERT_CONFIG = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 64, "num_hidden_layers": 2,
               "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 256,
               "type_vocab_size": 2}

model_case("no-tokenizer-files", "silent",
           lambda c: c.model_folder(drop=("tokenizer.json", "tokenizer_config.json")),
           Err("has no tokenizer files", "model"))
model_case("tokenizer-config-only", "silent", lambda c: c.model_folder(drop=("tokenizer.json",)),
           Err("has no tokenizer files"))
model_case("config-of-another-architecture", "silent", lambda c: c.model_folder(config=BERT_CONFIG),
           Err("config.json", "do not match", "model.safetensors"))
model_case("config-with-more-layers", "silent", lambda c: c.model_folder(config={"num_hidden_layers": 3}),
           Err("do not match", "missing", "layers.2"))
model_case("config-with-fewer-layers", "silent", lambda c: c.model_folder(config={"num_hidden_layers": 1}),
           Err("do not match", "unexpected", "layers.1"))
model_case("config-with-other-width", "traceback",
           lambda c: c.model_folder(config={"hidden_size": 128, "intermediate_size": 256}),
           Err("do not match", "shape"))
model_case("weights-truncated", "traceback",
           lambda c: c.model_folder(add={"model.safetensors": weights(c)[: len(weights(c)) // 2]}),
           Err("model.safetensors", "damaged"))
model_case("weights-zero-bytes", "traceback", lambda c: c.model_folder(add={"model.safetensors": b""}),
           Err("model.safetensors", "damaged"))
model_case("weights-garbage", "traceback",
           lambda c: c.model_folder(add={"model.safetensors": b"<html>404 not found</html>" * 10}),
           Err("model.safetensors", "damaged"))
model_case("tokenizer-json-truncated", "traceback",
           lambda c: c.model_folder(add={"tokenizer.json": (c.model / "tokenizer.json").read_bytes()[:500]}),
           Err("tokenizer.json", "not valid JSON"))
model_case("tokenizer-config-not-json", "traceback",
           lambda c: c.model_folder(add={"tokenizer_config.json": b"{'model_max_length': 512,}"}),
           Err("tokenizer_config.json", "not valid JSON"))
model_case("generation-config-not-json", "traceback",
           lambda c: c.model_folder(add={"generation_config.json": b"\x00\x01\x02"}),
           Err("generation_config.json", "not valid JSON"))


def sharded(c: Ctx, damage: str) -> Path:
    from safetensors.torch import load_file, save_file

    folder = c.model_folder(drop=("model.safetensors",))
    tensors = load_file(c.model / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    index = {"metadata": {}, "weight_map": {}}
    for i, part in enumerate((names[:half], names[half:]), start=1):
        file = f"model-0000{i}-of-00002.safetensors"
        save_file({n: tensors[n].contiguous() for n in part}, folder / file, metadata={"format": "pt"})
        index["weight_map"].update({n: file for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    if damage == "missing-shard":
        (folder / "model-00002-of-00002.safetensors").unlink()
    elif damage == "index":
        (folder / "model.safetensors.index.json").write_text('{"weight_map": {')
    return folder


model_case("shard-missing", "traceback", lambda c: sharded(c, "missing-shard"),
           Err("model-00002-of-00002.safetensors", "missing"))
model_case("shard-index-not-json", "traceback", lambda c: sharded(c, "index"),
           Err("model.safetensors.index.json", "not valid JSON"))

# ---------------------------------------------------------------------------------------------
# Tracebacks and silent success: damaged run folders in evaluate, merge, generate, push
# ---------------------------------------------------------------------------------------------


def damage(path: Path, how: str) -> None:
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: max(1, len(data) // 2)])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    elif how == "json-list":
        path.write_text("[1, 2, 3]\n")
    elif how == "bad-yaml":
        path.write_text(path.read_text().replace("adapter:\n", "adapter: [\n", 1))
    elif how == "remove":
        path.unlink()
    else:
        raise ValueError(how)


RUN_DAMAGE = [
    # (id, file in the run folder, how, words of the error)
    ("adapter-weights-truncated", "adapter/adapter_model.safetensors", "truncate",
     ("adapter/adapter_model.safetensors", "damaged")),
    ("adapter-weights-empty", "adapter/adapter_model.safetensors", "empty",
     ("adapter/adapter_model.safetensors", "damaged")),
    ("adapter-weights-garbage", "adapter/adapter_model.safetensors", "garbage",
     ("adapter/adapter_model.safetensors", "damaged")),
    ("adapter-config-truncated", "adapter/adapter_config.json", "truncate",
     ("adapter/adapter_config.json", "not valid JSON")),
    ("adapter-config-empty", "adapter/adapter_config.json", "empty", ("adapter/adapter_config.json", "not valid JSON")),
    ("adapter-config-a-list", "adapter/adapter_config.json", "json-list",
     ("adapter/adapter_config.json", "JSON object")),
    ("recipe-yaml-malformed", "recipe.yaml", "bad-yaml", ("recipe.yaml", "malformed YAML")),
    ("recipe-yaml-empty", "recipe.yaml", "empty", ("recipe.yaml", "empty")),
    ("recipe-yaml-binary", "recipe.yaml", "garbage", ("recipe.yaml",)),
    ("label-map-truncated", "label_map.json", "truncate", ("label_map.json", "not valid JSON")),
    ("label-map-a-list", "label_map.json", "json-list", ("label_map.json",)),
    ("adapter-tokenizer-missing", "adapter/tokenizer.json", "remove", ("adapter", "has no tokenizer files")),
    ("adapter-tokenizer-truncated", "adapter/tokenizer.json", "truncate", ("adapter/tokenizer.json", "not valid JSON")),
    ("adapter-tokenizer-config-garbage", "adapter/tokenizer_config.json", "garbage",
     ("adapter/tokenizer_config.json", "not valid JSON")),
]
CLASSIFICATION_ONLY = ("label-map-truncated", "label-map-a-list")


def damaged_run(file: str, how: str, extra: tuple[str, ...] = ()) -> Callable[[Ctx], Path]:
    def make(c: Ctx) -> Path:
        _, run = c.run_copy()
        for name in (file, *extra):
            damage(run / name, how)
        return run
    return make


for damage_id, file, how, words in RUN_DAMAGE:
    also_damaged = ("adapter/tokenizer_config.json",) if damage_id == "adapter-tokenizer-missing" else ()
    make = damaged_run(file, how, also_damaged)
    case(f"evaluate-{damage_id}", "traceback", lambda c, make=make: ["evaluate", str(make(c))], Err(*words))
    case(f"merge-{damage_id}", "traceback", lambda c, make=make: ["merge", str(make(c))], Err(*words))
    case(f"push-dry-run-{damage_id}", "silent",
         lambda c, make=make: ["push", str(make(c)), "--repo-id", "me/run", "--dry-run",
                               "--base-model-id", "me/base"], Err(*words))
    if damage_id not in CLASSIFICATION_ONLY:
        case(f"generate-{damage_id}", "traceback", lambda c, make=make: ["generate", str(make(c)), "hello"],
             Err(*words))
    if file == "recipe.yaml":
        case(f"train-resume-{damage_id}", "traceback",
             lambda c, make=make: ["train", str(c.tmp / "run-recipe.yaml"), "--resume"] if make(c) else [],
             Err(*words))


def merged_damaged(how: str) -> Callable[[Ctx], list[str]]:
    def build(c: Ctx) -> list[str]:
        _, run = c.run_copy()
        merged = run / "merged"
        merged.mkdir()
        shutil.copy(c.model / "config.json", merged / "config.json")
        (merged / "model.safetensors").write_bytes(weights(c))
        damage(merged / ("config.json" if how == "json-list" else "model.safetensors"), how)
        return ["push", str(run), "--merged", "--repo-id", "me/run", "--dry-run", "--base-model-id", "me/base"]
    return build


for how in ("truncate", "empty", "garbage"):
    case(f"push-dry-run-merged-weights-{how}", "silent", merged_damaged(how),
         Err("merged/model.safetensors", "damaged"))
case("push-dry-run-merged-config-a-list", "silent", merged_damaged("json-list"),
     Err("merged/config.json", "JSON object"))
case("push-dry-run-metrics-truncated", "traceback",
     lambda c: ["push", str(damaged_run("metrics.json", "truncate")(c)), "--repo-id", "me/run", "--dry-run",
                "--base-model-id", "me/base"], Err("metrics.json", "not valid JSON"))

# ---------------------------------------------------------------------------------------------
# Checkpoints and --resume
# ---------------------------------------------------------------------------------------------


def resume_with_damaged(file: str, how: str, step: int = 4) -> Callable[[Ctx], list[str]]:
    def build(c: Ctx) -> list[str]:
        recipe, run = c.run_copy(c.two_checkpoints[1], c.two_checkpoints[0])
        damage(run / "checkpoints" / f"checkpoint-{step}" / file, how)
        return ["train", str(recipe), "--resume"]
    return build


def resume_only_checkpoint_damaged(file: str, how: str) -> Callable[[Ctx], list[str]]:
    def build(c: Ctx) -> list[str]:
        recipe, run = c.run_copy()
        damage(run / "checkpoints" / "checkpoint-2" / file, how)
        return ["train", str(recipe), "--resume"]
    return build


RESUME_FALLBACK = [
    ("adapter-weights-truncated", "adapter_model.safetensors", "truncate"),
    ("trainer-state-not-json", "trainer_state.json", "truncate"),
    ("optimizer-truncated", "optimizer.pt", "truncate"),
    ("adapter-config-empty", "adapter_config.json", "empty"),
]
for damage_id, file, how in RESUME_FALLBACK:
    case(f"resume-newest-checkpoint-{damage_id}", "traceback", resume_with_damaged(file, how),
         Ok("skipping checkpoint-4", file, "resuming from", "checkpoint-2"))
for damage_id, file, how in RESUME_FALLBACK[:3]:
    case(f"resume-only-checkpoint-{damage_id}", "traceback", resume_only_checkpoint_damaged(file, how),
         Err("checkpoint-2", file, "no complete checkpoint loads"))

# ---------------------------------------------------------------------------------------------
# Unclear messages
# ---------------------------------------------------------------------------------------------


def recipe_folder(c: Ctx) -> list[str]:
    folder = c.tmp / "recipes"
    folder.mkdir()
    write_recipe(folder / "sst2.yaml", c.recipe_dict())
    return ["train", str(folder)]


case("train-recipe-is-a-folder", "unclear", recipe_folder, Err("is a folder", "sst2.yaml"))
case("validate-recipe-is-a-folder", "unclear", lambda c: ["validate", *recipe_folder(c)[1:]],
     Err("is a folder", "sst2.yaml"))
case("validate-without-a-recipe", "unclear", lambda c: ["validate"], Err("validate needs a recipe", "RECIPE"))
case("override-after-resume", "unclear", lambda c: train(c, "--resume", "adapter.r=0"),
     Err("'adapter.r' must be a positive integer"))
case("override-after-resume-applied", "unclear", lambda c: train(c, "--resume", "train.max_steps=1"),
     Ok("no complete checkpoint", "run folder:"))
for key, value in (("packing", True), ("completion_only_loss", True), ("assistant_only_loss", True),
                   ("padding_free", True), ("packing_strategy", "bfd")):
    both(f"sft-key-{key}-in-classification", "unclear",
         Err(f"'train.{key}'", "task sft", "not of task classification"), train={key: value})
both("unknown-train-key-is-short", "unclear", Err("unknown key 'train.frobnicate'"), train={"frobnicate": 1})

# Legal inputs that must keep working (no over-rejection)
case("validate-good-recipe", "ok", lambda c: validate(c), Ok("recipe OK"))
case("validate-label-ids-with-names", "ok", lambda c: validate(c, data={"label_names": ["neg", "pos"]}), Ok("0=neg"))


# ---------------------------------------------------------------------------------------------
# Fixtures and the test
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def two_checkpoint_run(tiny_llama_dir, sst2_small, tmp_path_factory) -> tuple[Path, Path]:
    """(recipe, run folder) of a finished 4-step run with complete checkpoints at steps 2 and 4."""
    from tests.conftest import torch_threads

    tmp = tmp_path_factory.mktemp("two-checkpoints")
    data = {name: Path(shutil.copy(path, tmp / path.name)) for name, path in sst2_small.items()}
    recipe = tiny_recipe(tiny_llama_dir, data, tmp / "run", evaluate={"enabled": False},
                         keep_checkpoints="all")  # a finished run keeps only its last checkpoint by default
    recipe["train"].update(max_steps=4, save_strategy="steps", save_steps=2)
    path = write_recipe(tmp / "recipe.yaml", recipe)
    with torch_threads(1):
        assert main(["train", str(path)]) == 0
    return path, tmp / "run"


@pytest.fixture
def ctx(request, tmp_path, tiny_llama_dir, sst2_small, tiny_run):
    two = request.getfixturevalue("two_checkpoint_run") if "resume-newest" in request.node.name else None
    return Ctx(tmp_path / "case", tiny_llama_dir, sst2_small, *tiny_run, two_checkpoints=two)


@pytest.fixture
def model_tripwire(monkeypatch):
    """Records (and, unless counting, stops) any model load; tokenizers load freely."""
    state = {"loaded": False, "armed": False}
    real = peftkit.model.base._from_pretrained

    def tripwire(cls, *args, **kwargs):
        if getattr(cls, "__name__", "") == "AutoTokenizer":  # cheap, and what `train` reads the data with
            return real(cls, *args, **kwargs)
        state["loaded"] = True
        if state["armed"] and not COUNTING:
            raise ModelLoaded("a model or tokenizer was loaded before the error was found")
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(peftkit.model.base, "_from_pretrained", tripwire)
    return state


def new_file_allowed(name: str) -> bool:
    """Legal runs write into their own folders; failing ones write nothing (checked against `before`)."""
    return name.startswith(("out", "run/")) or name == "out"


@pytest.mark.parametrize("case_id,category,build,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input_case(case_id, category, build, expect, ctx, model_tripwire, capsys):
    ctx.tmp.mkdir()
    argv = build(ctx)
    before = snapshot(ctx.tmp)
    capsys.readouterr()
    model_tripwire["armed"] = isinstance(expect, Err) and expect.early
    outcome = Outcome(rc=None, out="", err="")
    try:
        outcome.rc = main(argv)
    except SystemExit as e:  # argparse
        outcome.rc = e.code if isinstance(e.code, int) else 1
    except BaseException as e:  # noqa: BLE001 - a traceback for the user; judged below
        outcome.exception = e
    captured = capsys.readouterr()
    outcome.out, outcome.err, outcome.model_loaded = captured.out, captured.err, model_tripwire["loaded"]
    after = snapshot(ctx.tmp)
    if isinstance(expect, Err):
        outcome.changed = changed_files(before, after, lambda name: False)
    else:
        moved_aside = lambda name: ".damaged" in name  # noqa: E731 - a damaged checkpoint is kept, renamed
        outcome.changed = [n for n in changed_files(before, after, new_file_allowed)
                           if not (n.startswith(("out", "run/")) and not n.startswith("run/checkpoints/"))
                           and not moved_aside(n)]
        outcome.changed = [n for n in outcome.changed if not _kept_elsewhere(n, before, after)]
    verdict, why = judge(expect, outcome)
    record(case_id, category, verdict, why)
    assert verdict == "ok", f"{verdict}: {why}\nstdout tail: {outcome.out[-800:]}\nstderr tail: {outcome.err[-1500:]}"


def _kept_elsewhere(name: str, before: dict[str, str], after: dict[str, str]) -> bool:
    """A file of a damaged checkpoint that was moved aside intact (checkpoint-4 -> checkpoint-4.damaged...)."""
    parts = name.split("/")
    for i, part in enumerate(parts):
        if part.startswith("checkpoint-"):
            for moved in after:
                moved_parts = moved.split("/")
                if (len(moved_parts) == len(parts) and moved_parts[i].startswith(part + ".damaged")
                        and moved_parts[:i] == parts[:i] and moved_parts[i + 1:] == parts[i + 1:]
                        and after[moved] == before[name]):
                    return True
    return False


def test_there_are_at_least_150_cases():
    assert len(CASES) >= 150, len(CASES)


def test_resume_keeps_the_damaged_checkpoint_and_says_why(tmp_path, tiny_llama_dir, sst2_small, tiny_run,
                                                          two_checkpoint_run, capsys):
    """The fallback in detail: the newest checkpoint is skipped with its reason, moved aside byte for byte (never
    deleted), and the run continues from the one before it to the same final step."""
    c = Ctx(tmp_path / "case", tiny_llama_dir, sst2_small, *tiny_run, two_checkpoints=two_checkpoint_run)
    c.tmp.mkdir()
    recipe, run = c.run_copy(two_checkpoint_run[1], two_checkpoint_run[0])
    broken = run / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors"
    damage(broken, "truncate")
    damaged_bytes = broken.read_bytes()
    assert main(["train", str(recipe), "--resume"]) == 0
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if "skipping checkpoint-4" in line]
    assert len(skipped) == 1 and "adapter_model.safetensors" in skipped[0], out
    kept = list((run / "checkpoints").glob("checkpoint-4.damaged*/adapter_model.safetensors"))
    assert len(kept) == 1 and kept[0].read_bytes() == damaged_bytes
    assert f"resuming from {run / 'checkpoints' / 'checkpoint-2'}" in out
    assert json.loads((run / "train_summary.json").read_text())["global_step"] == 4
