"""Recipes: small typed sections, one per concern, with every default in this file.

A recipe is YAML. ``load_recipe(path, overrides)`` reads it, applies ``section.key=value`` overrides,
rejects unknown keys (with a "did you mean"), checks types and impossible combinations, and returns a
validated ``Recipe``, all before anything heavy is imported or loaded.

The ``train`` section is not redeclared here: its keys are ``transformers.TrainingArguments`` fields
(``trl.SFTConfig`` for causal-LM tasks) and go straight through, so users keep the names they know.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from peftkit.errors import PeftkitError

TASKS = ("classification", "sft", "generative_classification")
CAUSAL_TASKS = ("sft", "generative_classification")
"""Tasks trained as a causal LM with ``trl.SFTTrainer``; their ``train`` section is a ``trl.SFTConfig``."""
SFT_FORMATS = ("text", "prompt_completion", "messages", "alpaca")
# Attention implementations that keep packed (padding-free) sequences apart: every run re-checks it on its model.
EXACT_PACKING_ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")
DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclass
class ModelSection:
    """Which pretrained model to start from and how to load it."""

    name_or_path: str = ""
    """Hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``), local folder, or ``packaged:<name>`` (offline models)."""
    dtype: str = "float32"
    """Weights dtype for the non-quantized parts: float32 | bfloat16 | float16 | auto."""
    attn_implementation: str | None = "sdpa"
    """eager | sdpa | flash_attention_2; None lets transformers choose."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to pin the base model."""
    trust_remote_code: bool = False
    """Run the model repository's own Python code. Only if you trust that repository."""
    allow_pickle: bool = False
    """Allow loading ``.bin``/``.pt`` (pickle) weights. Pickles can execute code: safetensors only by default."""


@dataclass
class QuantizationSection:
    """bitsandbytes quantization of the base model (QLoRA). Names are those of ``BitsAndBytesConfig``."""

    load_in_4bit: bool = False
    load_in_8bit: bool = False
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_compute_dtype: str = "auto"
    """auto: bfloat16 on a GPU that supports it, else float32."""
    bnb_4bit_quant_storage: str | None = None
    """None: uint8, or the compute dtype when FSDP/ZeRO-3 must shard the quantized weights."""
    llm_int8_threshold: float = 6.0
    llm_int8_skip_modules: list[str] | None = None

    @property
    def enabled(self) -> bool:
        return self.load_in_4bit or self.load_in_8bit


@dataclass
class AdapterSection:
    """LoRA-family adapter. Names are those of ``peft.LoraConfig``."""

    r: int = 16
    """Rank: higher gives more capacity and memory."""
    lora_alpha: float = 32
    lora_dropout: float = 0.05
    target_modules: Union[str, list[str]] = "all-linear"
    use_dora: bool = False
    use_rslora: bool = False
    init_lora_weights: Union[bool, str] = True
    """True (Kaiming/zeros) | false | gaussian | pissa | olora | loftq | eva ..."""
    modules_to_save: list[str] | None = None
    """Extra fully-trained modules. The classification head is always added."""
    bias: Literal["none", "all", "lora_only"] = "none"


@dataclass
class DataSection:
    """Where the examples come from and how they are read."""

    train_file: str | None = None
    eval_file: str | None = None
    dataset: str | None = None
    """Hub dataset id, instead of local files."""
    dataset_config: str | None = None
    train_split: str = "train"
    eval_split: str = "validation"
    format: Literal["classification", "text", "prompt_completion", "messages", "alpaca"] = "classification"
    """classification (text + label; also for task generative_classification) | text (plain language modeling) |
    prompt_completion | messages (chat turns, rendered with the tokenizer's chat template) |
    alpaca (instruction/input/output columns mapped to prompt/completion with a template)."""
    text_column: str = "text"
    label_column: str = "label"
    label_names: list[str] | None = None
    """Class names in id order. Labels in the data may be these names or their ids. None: sorted unique labels."""
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    messages_column: str = "messages"
    """A list of {role, content} turns per row (jsonl, parquet or hub data)."""
    prompt_template: str | None = None
    """Builds the prompt from the row's columns, e.g. "Review: {text}\\nSentiment:" ({text} is data.text_column).
    Defaults: classification "{text}\\nLabel:"; alpaca the Stanford Alpaca prompt (with use_chat_template: the
    instruction, then the input); prompt_completion the prompt column."""
    completion_template: str | None = None
    """Builds the completion from the row's columns (prompt_completion, alpaca), e.g. " {label}"."""
    label_words: dict[str, str] | None = None
    """generative_classification: the completion for each label name. None: " " + the label name."""
    use_chat_template: bool = False
    """Send the prompt as a user turn and the completion as the assistant turn, rendered with the tokenizer's
    chat template (instruct models). prompt_completion, alpaca and classification formats."""
    max_dropped_fraction: float = 0.5
    """Causal-LM tasks: stop when more than this fraction of a split would be dropped because truncation to
    max_length leaves an example no tokens to learn from (trl#1191)."""
    delimiter: str | None = None
    """For csv/tsv files: the one character between fields (";" for European CSV, "|", "\\t"). None: by
    extension, tab for .tsv and comma for .csv."""
    has_header: bool = True
    """For csv/tsv files. False: give column_names."""
    column_names: list[str] | None = None
    max_length: int = 128
    """Tokens per example; longer examples are truncated (and counted). Causal-LM tasks: also the length of a
    packed row (trl.SFTConfig's max_length)."""
    max_train_samples: int | None = None
    """Use a seeded random subset of this size (fast experiments)."""
    max_eval_samples: int | None = None
    eval_fraction: float = 0.1
    """Held out from train when there is no eval file or split."""
    invalid_rows: Literal["skip", "error"] = "skip"
    """Rows with empty text or a label outside the label set: skip them (reported) or stop."""


@dataclass
class EvaluateSection:
    """Evaluation after training and in ``peftkit evaluate``."""

    batch_size: int = 32
    enabled: bool = True


@dataclass
class SafetySection:
    """What a run does when training goes numerically wrong."""

    on_nonfinite_loss: Literal["stop", "skip"] = "stop"
    """stop: raise, naming the step (weights untouched). skip: drop the batch, count and report it."""
    max_skipped_batches: int = 10
    """With skip: stop anyway after this many bad batches (something is systematically wrong)."""


@dataclass
class MergeSection:
    """``peftkit merge``: which weights the adapter is merged into, how the result is saved and checked."""

    base: Literal["auto", "original", "dequantized"] = "auto"
    """For adapters trained on a 4/8-bit base: merge into the original full-precision weights, into the
    dequantized quantized weights the adapter was trained against, or auto: build both, measure each against
    the adapter model on the verification sample, keep the closer one. Unquantized runs always use original."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype of the saved merged weights. The merge itself is always done in float32."""
    verify_samples: int | None = 256
    """Eval rows (a seeded random subset) on which the merged model is checked against the adapter model;
    null: the whole eval split."""
    max_accuracy_drop: float = 0.005
    """Fail the merge (nothing is written in place) if accuracy on the verification sample drops by more."""
    max_shard_size: str = "5GB"
    """Largest safetensors shard of the merged model (integer with GB, MB, KB, GiB, MiB or KiB)."""


# Defaults for TrainingArguments that differ from transformers' own, chosen for LoRA fine-tuning.
TRAIN_DEFAULTS: dict[str, Any] = {
    "learning_rate": 2e-4,
    "num_train_epochs": 1.0,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "lr_scheduler_type": "linear",
    "warmup_steps": 0.06,
    "weight_decay": 0.0,
    "logging_steps": 10,
    "save_strategy": "steps",
    "save_steps": 200,
    "save_total_limit": 2,
    "eval_strategy": "no",
    "report_to": ["tensorboard"],
    "seed": 42,
    "data_seed": 42,
    "dataloader_num_workers": 0,
}
# Set by peftkit itself; a recipe cannot change them. Key -> where the setting lives instead.
TRAIN_RESERVED = {
    "output_dir": "use the top-level output_dir instead",
    "logging_dir": "logs go to OUTPUT_DIR/logs",
    "remove_unused_columns": "peftkit prepares the columns itself",
    "label_names": "labels come from data.label_names",
    "hub_token": "secrets never go in a recipe: set HF_TOKEN in the environment or run `hf auth login`",
}
# Defaults for trl.SFTConfig (causal-LM tasks) on top of TRAIN_DEFAULTS. TRL's own defaults turn on bf16 and
# gradient checkpointing; peftkit decides precision the same way for every task (peftkit/speed.py: bf16 autocast
# only where measured to pay off) and keeps checkpointing opt-in, off through its transformers 5 name
# (activation_checkpointing) unless the recipe names either spelling; `packing` follows the attention implementation.
SFT_TRAIN_DEFAULTS: dict[str, Any] = {}
SFT_TRAIN_RESERVED = {
    "max_length": "use data.max_length (one limit for the data audit and for training)",
    "dataset_text_field": "use data.text_column",
    "dataset_kwargs": "peftkit prepares the data itself, to count what is truncated or dropped",
    "model_init_kwargs": "the model section loads the model",
    "trust_remote_code": "use model.trust_remote_code",
    "pad_token": "peftkit sets the tokenizer's pad token",
}


@dataclass
class Recipe:
    task: str = "classification"
    output_dir: str = "runs/peftkit-run"
    overwrite_output_dir: bool = False
    """Replace an existing run folder that holds a different run."""
    model: ModelSection = field(default_factory=ModelSection)
    quantization: QuantizationSection = field(default_factory=QuantizationSection)
    adapter: AdapterSection = field(default_factory=AdapterSection)
    data: DataSection = field(default_factory=DataSection)
    train: dict[str, Any] = field(default_factory=dict)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    safety: SafetySection = field(default_factory=SafetySection)
    merge: MergeSection = field(default_factory=MergeSection)
    keep_checkpoints: Literal["last", "none", "all"] = "last"
    """At the end of a successful run: keep the last checkpoint (``--resume`` of the finished run reloads it),
    none (the adapter/ folder is the result; ``--resume`` then says the run is finished) or all that rotation kept."""
    source: str | None = None
    """The file the recipe came from (not a recipe key)."""

    @property
    def seed(self) -> int:
        return int(self.train.get("seed", TRAIN_DEFAULTS["seed"]))

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved recipe (all defaults filled), as written to the run folder."""
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


SECTIONS = {
    "model": ModelSection,
    "quantization": QuantizationSection,
    "adapter": AdapterSection,
    "data": DataSection,
    "evaluate": EvaluateSection,
    "safety": SafetySection,
    "merge": MergeSection,
}
TOP_LEVEL = ("task", "output_dir", "overwrite_output_dir", "keep_checkpoints", *SECTIONS, "train")


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_recipe(path: str | os.PathLike | None, overrides: list[str] = ()) -> Recipe:
    """Read, override, type-check and validate a recipe. Raises PeftkitError naming the key or file."""
    raw = read_yaml(path) if path is not None else {}
    for item in overrides:
        apply_override(raw, item)
    recipe = recipe_from_dict(raw, where=str(path) if path else "<recipe>")
    recipe.source = str(path) if path else None
    validate(recipe)
    return recipe


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise PeftkitError(f"recipe file not found: {p} (give the path to a .yaml recipe)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PeftkitError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start}); save the recipe as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PeftkitError(f"{p}:{where}: malformed YAML: {problem}") from None
    if raw is None:
        raise PeftkitError(f"{p}: the recipe is empty; it needs at least model.name_or_path and data")
    if not isinstance(raw, dict):
        raise PeftkitError(f"{p}: a recipe must be a mapping of sections (model:, data:, ...), got {type(raw).__name__}")
    return raw


def apply_override(raw: dict[str, Any], item: str) -> None:
    """``section.key=value`` with the value parsed as YAML (``train.learning_rate=1e-4``)."""
    if "=" not in item:
        raise PeftkitError(f"override {item!r}: expected section.key=value, e.g. train.learning_rate=1e-4")
    dotted, _, value_text = item.partition("=")
    keys = dotted.strip().split(".")
    if not all(keys):
        raise PeftkitError(f"override {item!r}: empty key in {dotted!r}")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError:
        value = value_text
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise PeftkitError(f"override {item!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def recipe_from_dict(raw: dict[str, Any], where: str = "<recipe>") -> Recipe:
    reject_unknown(raw, TOP_LEVEL, where, "")
    kwargs: dict[str, Any] = {}
    for name in ("task", "output_dir", "overwrite_output_dir", "keep_checkpoints"):
        if name in raw:
            kwargs[name] = coerce(raw[name], Recipe.__dataclass_fields__[name].type, f"{name}", where)
    for name, cls in SECTIONS.items():
        section = raw.get(name) or {}
        if not isinstance(section, dict):
            raise PeftkitError(f"{where}: '{name}' must be a section (key: value lines), got {section!r}")
        kwargs[name] = build_section(cls, section, name, where)
    train = raw.get("train") or {}
    if not isinstance(train, dict):
        raise PeftkitError(f"{where}: 'train' must be a section of TrainingArguments keys, got {train!r}")
    kwargs["train"] = build_train(train, where, kwargs.get("task", "classification"))
    if kwargs.get("task") in CAUSAL_TASKS and "packing" not in train:
        kwargs["train"]["packing"] = kwargs["model"].attn_implementation in EXACT_PACKING_ATTENTION
    return Recipe(**kwargs)


def reject_unknown(raw: dict[str, Any], known: typing.Iterable[str], where: str, prefix: str) -> None:
    known = list(known)
    for key in raw:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            suggestion = f"; did you mean '{prefix}{hint[0]}'?" if hint else f"; known keys: {', '.join(known)}"
            raise PeftkitError(f"{where}: unknown key '{prefix}{key}'{suggestion}")


def build_section(cls: type, raw: dict[str, Any], name: str, where: str):
    hints = typing.get_type_hints(cls)
    reject_unknown(raw, hints, where, f"{name}.")
    values = {key: coerce(value, hints[key], f"{name}.{key}", where) for key, value in raw.items()}
    return cls(**values)


def build_train(raw: dict[str, Any], where: str, task: str = "classification") -> dict[str, Any]:
    """Check train keys against the task's trainer config (TrainingArguments, or trl.SFTConfig for causal-LM
    tasks) and fill peftkit's defaults."""
    causal = task in CAUSAL_TASKS
    reserved = {**TRAIN_RESERVED, **(SFT_TRAIN_RESERVED if causal else {})}
    fields = training_argument_fields(task)
    for key in raw:
        if key in reserved:
            raise PeftkitError(f"{where}: 'train.{key}' is set by peftkit; {reserved[key]}")
        near_reserved = difflib.get_close_matches(str(key), list(reserved), n=1)
        if key not in fields and near_reserved:  # max_seq_length -> max_length: say where it lives in one step
            raise PeftkitError(f"{where}: unknown key 'train.{key}'; {reserved[near_reserved[0]]}")
    reject_unknown(raw, fields, where, "train.")
    values = {**TRAIN_DEFAULTS, **(SFT_TRAIN_DEFAULTS if causal else {})}
    if causal and "gradient_checkpointing" not in raw and "activation_checkpointing" not in raw:
        values["activation_checkpointing"] = False
    for key, value in raw.items():
        values[key] = coerce(value, fields[key], f"train.{key}", where)
    return values


def checkpointing_enabled(train: dict[str, Any]) -> bool:
    """Activation (gradient) checkpointing as transformers resolves it: the new name wins, the old is an alias."""
    new = train.get("activation_checkpointing")
    return bool(new if new is not None else train.get("gradient_checkpointing"))


def training_argument_fields(task: str = "classification") -> dict[str, Any]:
    """Field name -> type of the task's trainer config: trl.SFTConfig for causal-LM tasks, else TrainingArguments.

    transformers and trl are imported here, not at module import.
    """
    if task in CAUSAL_TASKS:
        from trl import SFTConfig as config_class
    else:
        from transformers import TrainingArguments as config_class

    return {f.name: f.type for f in dataclasses.fields(config_class) if f.init}


# ---------------------------------------------------------------------------------------------
# Types
# ---------------------------------------------------------------------------------------------


def coerce(value: Any, annotation: Any, key: str, where: str) -> Any:
    """Return value as the annotated type, or raise a PeftkitError naming the key.

    Lenient where YAML is surprising: ``2e-4`` (no dot) is a string in YAML 1.1, so numeric strings
    become floats; ints become floats. Everything else must already have the right type.
    """
    if isinstance(annotation, str):
        annotation = _resolve_string_annotation(annotation)
    ok, result = _try_coerce(value, annotation)
    if ok:
        return result
    raise PeftkitError(f"{where}: '{key}' must be {describe(annotation)}, got {value!r} ({type(value).__name__})")


def _try_coerce(value: Any, annotation: Any) -> tuple[bool, Any]:
    if annotation is Any:
        return True, value
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None:
            return type(None) in args, None
        # exact-type members first, so "2e-4" in str|float stays what the member order says
        for arg in sorted(args, key=lambda a: 0 if isinstance(a, type) and type(value) is a else 1):
            ok, result = _try_coerce(value, arg)
            if ok:
                return True, result
        return False, None
    if origin is Literal:
        return value in typing.get_args(annotation), value
    if origin in (list, tuple):
        if isinstance(value, str):
            return False, None
        if not isinstance(value, (list, tuple)):
            return False, None
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        items = [_try_coerce(v, item_type) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if origin is dict:
        return isinstance(value, dict), value
    if annotation is type(None):
        return value is None, None
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        if isinstance(value, bool):
            return False, None
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value.strip()):
            return True, float(value)
        return False, None
    if annotation is str:
        return isinstance(value, str), value
    if isinstance(annotation, type) and issubclass(annotation, str):  # str enums in TrainingArguments
        return isinstance(value, str), value
    if isinstance(annotation, type):
        return isinstance(value, annotation), value
    return True, value


def _resolve_string_annotation(text: str) -> Any:
    try:
        return eval(text, {**typing.__dict__, "Union": Union}, {})  # noqa: S307 - annotations of our own dataclasses
    except Exception:
        return Any


def describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(annotation))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (list, tuple):
        (item,) = typing.get_args(annotation)[:1] or (Any,)
        return f"a list of {describe(item)}"
    if annotation is type(None):
        return "null"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


# ---------------------------------------------------------------------------------------------
# Cross-field checks (cheap: no model, no data loaded)
# ---------------------------------------------------------------------------------------------


def validate(recipe: Recipe) -> None:
    where = recipe.source or "<recipe>"
    m, q, a, d, t = recipe.model, recipe.quantization, recipe.adapter, recipe.data, recipe.train

    def fail(message: str) -> typing.NoReturn:
        raise PeftkitError(f"{where}: {message}")

    if recipe.task not in TASKS:
        fail(f"'task' must be one of {', '.join(TASKS)}, got {recipe.task!r}")
    if not recipe.output_dir:
        fail("'output_dir' is empty; name the run folder, e.g. runs/sst2-smollm2")
    if not m.name_or_path:
        fail("'model.name_or_path' is required: a hub id, a local folder or packaged:<name>")
    if m.dtype not in DTYPES:
        fail(f"'model.dtype' must be one of {', '.join(DTYPES)}, got {m.dtype!r}")
    if m.attn_implementation not in (None, "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"):
        fail(f"'model.attn_implementation' {m.attn_implementation!r} is not known; use eager, sdpa or flash_attention_2")

    if q.load_in_4bit and q.load_in_8bit:
        fail("'quantization.load_in_4bit' and 'quantization.load_in_8bit' are both true; choose one")
    if q.bnb_4bit_compute_dtype not in DTYPES:
        fail(f"'quantization.bnb_4bit_compute_dtype' must be one of {', '.join(DTYPES)}")
    if q.bnb_4bit_quant_storage not in (None, "uint8", "float32", "bfloat16", "float16"):
        fail("'quantization.bnb_4bit_quant_storage' must be uint8, float32, bfloat16 or float16")

    if a.r <= 0:
        fail(f"'adapter.r' must be a positive integer, got {a.r}")
    if a.lora_alpha <= 0:
        fail(f"'adapter.lora_alpha' must be positive, got {a.lora_alpha}")
    if not 0 <= a.lora_dropout < 1:
        fail(f"'adapter.lora_dropout' must be in [0, 1), got {a.lora_dropout}")
    if isinstance(a.target_modules, list) and not a.target_modules:
        fail("'adapter.target_modules' is an empty list; use all-linear or name the modules (q_proj, v_proj, ...)")
    init = a.init_lora_weights
    if isinstance(init, str) and init not in ("gaussian", "pissa", "olora", "loftq", "eva", "orthogonal", "corda") and not init.startswith("pissa_niter_"):
        fail(f"'adapter.init_lora_weights' {init!r} is not a PEFT init method; use true, gaussian, pissa, olora, ...")
    if q.enabled and isinstance(init, str) and init.split("_")[0] in ("pissa", "olora", "loftq", "corda"):
        fail(f"'adapter.init_lora_weights: {init}' rewrites the base weights and cannot start from a quantized base; "
             "drop 'quantization' (PEFT quantizes the residual itself for loftq) or use the default init")
    if a.use_dora and q.load_in_8bit:
        # PEFT's DoRA needs the dequantized base weight norm each step; on 8-bit it is slow and unsupported for merge.
        fail("'adapter.use_dora' with 'quantization.load_in_8bit' is not supported; use load_in_4bit (QDoRA) or no quantization")

    if d.dataset is None and d.train_file is None:
        fail("'data' needs 'train_file' (a local csv/tsv/jsonl/parquet file) or 'dataset' (a hub dataset id)")
    if d.dataset is not None and d.train_file is not None:
        fail("'data.dataset' and 'data.train_file' are both set; choose hub or local data")
    if d.delimiter is not None and len(d.delimiter) != 1:
        fail(f"'data.delimiter' must be one character, e.g. \";\" or \"\\t\" (in double quotes), got {d.delimiter!r}")
    if not d.has_header and not d.column_names:
        fail("'data.has_header' is false: give 'data.column_names' (e.g. [text, label])")
    if d.column_names and d.has_header:
        fail("'data.column_names' is only for files without a header; set 'data.has_header: false'")
    if d.max_length < 8:
        fail(f"'data.max_length' must be at least 8 tokens, got {d.max_length}")
    for key in ("max_train_samples", "max_eval_samples"):
        value = getattr(d, key)
        if value is not None and value <= 0:
            fail(f"'data.{key}' must be a positive integer or null, got {value}")
    if not 0 < d.eval_fraction < 1:
        fail(f"'data.eval_fraction' must be between 0 and 1, got {d.eval_fraction}")
    if d.label_names is not None:
        if len(d.label_names) < 2:
            fail("'data.label_names' needs at least two classes")
        if len(set(d.label_names)) != len(d.label_names):
            fail("'data.label_names' has duplicates")
    if recipe.safety.max_skipped_batches < 0:
        fail("'safety.max_skipped_batches' must be 0 or more")
    if recipe.evaluate.batch_size <= 0:
        fail("'evaluate.batch_size' must be positive")
    if recipe.task in CAUSAL_TASKS:
        validate_causal(recipe, fail)
    else:
        for key in ("prompt_template", "completion_template", "label_words", "use_chat_template"):
            if getattr(d, key) != getattr(DataSection, key):
                fail(f"'data.{key}' is for causal-LM tasks (task: sft or generative_classification), "
                     f"not task: {recipe.task}")
        if d.format != "classification":
            fail(f"'data.format: {d.format}' needs task: sft; task: {recipe.task} reads classification data")

    mg = recipe.merge
    if mg.verify_samples is not None and mg.verify_samples <= 0:
        fail(f"'merge.verify_samples' must be a positive integer or null (the whole eval split), got {mg.verify_samples}")
    if not 0 <= mg.max_accuracy_drop <= 1:
        fail(f"'merge.max_accuracy_drop' must be between 0 and 1 (a fraction, 0.005 = half a point), "
             f"got {mg.max_accuracy_drop}")
    if not re.fullmatch(r"\d+(GB|MB|KB|GiB|MiB|KiB)", mg.max_shard_size):
        fail(f"'merge.max_shard_size' must be an integer with a unit, e.g. 5GB or 500MB, got {mg.max_shard_size!r}")
    if mg.base == "dequantized" and not q.enabled:
        fail("'merge.base: dequantized' needs a quantized run (quantization.load_in_4bit or load_in_8bit); "
             "an unquantized run merges into its original weights (base: original or auto)")

    for key in ("learning_rate",):
        if float(t.get(key, 1)) <= 0:
            fail(f"'train.{key}' must be positive, got {t[key]}")
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if key in t and int(t[key]) <= 0:
            fail(f"'train.{key}' must be a positive integer, got {t[key]}")
    if t.get("bf16") and t.get("fp16"):
        fail("'train.bf16' and 'train.fp16' are both true; choose one")


def validate_causal(recipe: Recipe, fail: typing.Callable[[str], typing.NoReturn]) -> None:
    """Checks for task sft / generative_classification: format, templates, loss masks, packing."""
    d, t = recipe.data, recipe.train
    if recipe.task == "generative_classification" and d.format != "classification":
        fail(f"task generative_classification reads classification data (text + label): set data.format: "
             f"classification, not {d.format}")
    if recipe.task == "sft" and d.format not in SFT_FORMATS:
        fail(f"task sft needs 'data.format' {', '.join(SFT_FORMATS)}; to predict labels from classification data "
             "use task: generative_classification")
    for key in ("prompt_template", "completion_template"):
        template = getattr(d, key)
        if template is not None:
            check_template(template, f"data.{key}", fail)
    if d.format in ("text", "messages"):
        for key in ("prompt_template", "completion_template"):
            if getattr(d, key) is not None:
                fail(f"'data.{key}' builds prompts and completions; data.format {d.format} has none "
                     "(use prompt_completion or alpaca)")
    if d.format == "classification" and d.completion_template is not None:
        fail("'data.completion_template' is not used by classification data; set 'data.label_words' instead")
    if d.label_words is not None:
        if recipe.task != "generative_classification":
            fail("'data.label_words' is for task generative_classification")
        if not all(isinstance(w, str) and w.strip() for w in d.label_words.values()):
            fail("'data.label_words' values must be non-empty strings, e.g. {negative: ' negative'}")
        if len(set(d.label_words.values())) != len(d.label_words):
            fail("'data.label_words' maps two labels to the same word; each class needs its own")
    if d.use_chat_template and d.format in ("text", "messages"):
        fail(f"'data.use_chat_template' wraps prompt/completion pairs in chat turns; data.format {d.format} "
             + ("is rendered with the chat template already" if d.format == "messages" else "has no pairs"))
    if not 0 <= d.max_dropped_fraction <= 1:
        fail(f"'data.max_dropped_fraction' must be between 0 and 1, got {d.max_dropped_fraction}")

    pairs = d.format in ("prompt_completion", "alpaca", "classification")
    if t.get("completion_only_loss") and not pairs:
        fail(f"'train.completion_only_loss' needs prompt/completion data; data.format {d.format} has no completion "
             "(TRL would silently train on every token)" + (": use train.assistant_only_loss for chat data"
                                                           if d.format == "messages" else ""))
    if t.get("assistant_only_loss") and not (d.format == "messages" or d.use_chat_template):
        fail("'train.assistant_only_loss' needs chat data: data.format messages, or data.use_chat_template: true")
    if t.get("padding_free") and not t.get("packing") and recipe.task != "generative_classification":
        # TRL cannot truncate padding-free batches without packing; only classification prompts are fitted to
        # data.max_length by peftkit itself (sft_data.fit_classification_prompts)
        fail("'train.padding_free' without packing needs examples that already fit data.max_length, which peftkit "
             "guarantees for task generative_classification only; keep train.packing: true, which batches "
             "padding-free, or set train.padding_free: false")
    if t.get("packing") and t.get("packing_strategy", "bfd") not in ("bfd", "bfd_split", "wrapped"):
        fail("'train.packing_strategy' must be bfd, bfd_split or wrapped")
    if t.get("chat_template_path") and not str(t["chat_template_path"]).endswith((".jinja", ".j2")):
        fail("'train.chat_template_path' must be a .jinja or .j2 file (peftkit renders the data with it before "
             "training, to count what truncation drops)")


def check_template(template: str, key: str, fail: typing.Callable[[str], typing.NoReturn]) -> None:
    """A template is a Python format string over column names: catch unbalanced braces before any data is read."""
    import string

    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        fail(f"'{key}' is not a valid template ({e}); write columns as {{column}} and literal braces as {{{{ }}}}")
    if any(not name or not name.isidentifier() for name in fields):
        fail(f"'{key}': placeholders must be column names like {{text}}; got {template!r}")
