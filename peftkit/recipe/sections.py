"""The recipe's typed sections, one per concern, and every default peftkit uses.

A field's docstring is its documentation; ``peftkit validate`` and the README point here. Reading YAML lives
in ``loading.py``, checks across fields in ``checks.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from peftkit.recipe.task_traits import DEFAULT_TASK, SFT_CONFIG, TRAITS

TASKS = tuple(TRAITS)
CAUSAL_TASKS = tuple(name for name, t in TRAITS.items() if not t.head and not t.subtasks)
"""Tasks trained as one causal LM with ``trl.SFTTrainer`` (the recipe checks read their data as such)."""
SFT_CONFIG_TASKS = tuple(name for name, t in TRAITS.items() if t.trainer_config == SFT_CONFIG)
"""Tasks whose ``train`` section is a ``trl.SFTConfig`` (multitask: several generative_classification tasks)."""
CLASSIFICATION_FORMAT = "classification"
"""data.format of labelled text (a text and a label column): what every labelled task reads."""
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
    lm_head_positions: str = "learned"
    """Causal-LM training (sft, generative_classification): where the LM head is applied for the loss. ``learned``:
    only at positions whose next token is learned (the label word, the completion), on every device, as TRL does
    on CUDA; ``all``: every position (TRL's own behaviour on CPU). Same loss and gradients (to rounding);
    ``learned`` is faster and lighter when little of each row is learned (benchmarks/README.md, "SFT memory")."""
    cpu_attention_kernel: str | None = None
    """Training on CPU with sdpa attention: ``math`` runs torch's math sdpa kernel in the forward of every training
    step, ``default`` lets torch pick (its flash kernel, whose backward is slow at short sentences on CPU). Same
    attention to rounding; evaluation always keeps torch's choice. None: peftkit's measured default, math for
    padded batches and default for packed rows (printed in the "peftkit speed defaults" line). No effect on CUDA."""


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
    target_modules: str | list[str] = "all-linear"
    use_dora: bool = False
    use_rslora: bool = False
    init_lora_weights: bool | str = True
    """True (Kaiming/zeros) | false | gaussian | pissa | olora | loftq | eva ..."""
    modules_to_save: list[str] | None = None
    """Extra fully-trained modules. The classification head is always added."""
    bias: Literal["none", "all", "lora_only"] = "none"
    init_from: str | None = None
    """A peftkit run folder whose trained adapter starts this run instead of a fresh one (transfer). Its base
    model must be this recipe's, its adapter of the same kind (task) and shape (r, lora_alpha, target_modules,
    use_dora, use_rslora): checked before anything loads. Loaded through PEFT from its safetensors, with its own
    LoraConfig (this section's lora_dropout and modules_to_save are not applied to it)."""
    trainable_dtype: Literal["float32", "model"] = "float32"
    """float32: every trained weight (LoRA and the classification head) is kept in fp32, with its optimizer state,
    also when model.dtype stores the frozen base in 16 bits. model: trained weights other than LoRA's (which PEFT
    always upcasts) keep the base's dtype."""


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
    label_score: Literal["sum", "mean", "calibrated"] = "sum"
    """generative_classification: how a label word's tokens make its score. sum: log P(label word + EOS | prompt),
    what training maximises; mean: that per token; calibrated: minus the label's log-probability after a
    content-free prompt (the template with the text "N/A"), which removes each word's prior and its length's cost.
    Choose on a validation split (recipes/README.md has what each measured)."""
    bf16: bool = False
    """generative_classification: score labels under bf16 autocast (LM head in float32). Faster on CPUs with native
    bf16, but log-probabilities move by up to ~0.3 (benchmarks/README.md): off unless speed matters more."""


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


@dataclass
class SelectionSection:
    """Choosing the model on a validation split carved from the training data, never on the eval file.

    With ``validation_fraction`` > 0, a seeded, stratified share of the training rows is held out; the run
    evaluates on it during training (accuracy and macro F1 for classification tasks, loss for sft), keeps the best
    checkpoint (``load_best_model_at_end``), stops early when the metric stops improving, and evaluates the best
    checkpoint once on the eval file. ``train:`` keys you set yourself (eval_strategy, eval_steps, save_steps,
    metric_for_best_model, load_best_model_at_end, greater_is_better) win over what this section fills in.
    """

    validation_fraction: float = 0.0
    """Share of the training rows (after data.max_train_samples) held out for selection; 0: no validation split,
    no evaluation during training (the default, as before)."""
    validation_rows: int | None = None
    """An exact number of validation rows, instead of validation_fraction (set one of the two)."""
    validation_from: Literal["training_rows", "unused_rows"] = "training_rows"
    """training_rows: carved from the rows training would use (training keeps the rest). unused_rows: drawn from
    the training file's rows that data.max_train_samples leaves out, so training keeps every sampled row and the
    validation split can be far larger than a share of a small sample (needs data.max_train_samples); the size is
    validation_rows, or validation_fraction x the training rows."""
    validation_min_words: int | None = None
    """Draw validation rows only from rows whose text has at least this many words (split on whitespace); None:
    any row. For training files that mix short fragments with the kind of text the model will be asked about, so
    the split that ranks checkpoints and sweep trials looks like that text: GLUE's SST-2 training file holds the
    phrases of each sentence's parse tree (42.5% have five words or fewer), its dev and test sets whole sentences.
    Set it from what you know of the data you will predict on, never by trying values against the eval file.
    Training keeps the short rows (classification and generative_classification tasks)."""
    metric: str | None = None
    """What selects the best checkpoint (and a sweep's best trial): accuracy | macro_f1 | loss. None: macro_f1 for
    classification and generative_classification, loss for sft."""
    evaluations: int = 10
    """How many times training evaluates on the validation split (and saves a checkpoint): every 1/N of the
    training steps (train.eval_steps = train.save_steps = 1/N)."""
    early_stopping_patience: int | None = 3
    """Stop after this many evaluations without improvement; None: never stop early (the best checkpoint is still
    kept and used)."""
    early_stopping_threshold: float = 0.0
    """The least change of the metric that counts as an improvement."""

    @property
    def enabled(self) -> bool:
        """Whether the run has a validation split (and so evaluates, checkpoints and selects on it)."""
        return self.validation_fraction > 0 or bool(self.validation_rows)


@dataclass
class ImbalanceSection:
    """What a classification-head run does about classes of very different sizes in its training rows."""

    strategy: Literal["auto", "none", "class_weights", "balanced_sampling"] = "auto"
    """auto: class_weights when the largest training class has more than ``auto_ratio`` times the rows of the
    smallest (said in one line), else none. class_weights: cross-entropy weighted by n / (classes x n_class).
    balanced_sampling: draw training batches with replacement so each class is equally likely (replaces
    length-grouped batches). Task classification only; generative_classification trains unweighted."""
    auto_ratio: float = 3.0
    """Largest/smallest class-size ratio above which ``auto`` turns on class weights."""


@dataclass
class SweepSection:
    """``peftkit sweep``: a search over recipe keys with Optuna; ``peftkit train`` ignores this section.

    ``params`` maps a dotted recipe key to its search space: a list of choices (``adapter.r: [8, 16, 32]``) or a
    range (``train.learning_rate: {low: 1.0e-4, high: 3.0e-3, log: true}``; integers when low and high are both
    integers; optional ``step``). Every trial selects on the validation split (``selection``; 0.1 of the training
    rows when the recipe has none) and never reads the eval file.
    """

    params: dict[str, Any] = field(default_factory=dict)
    n_trials: int = 20
    """Trials in the whole study (every worker, every machine): finished + pruned + failed; a trial retried after a
    kill or a signal counts once."""
    metric: str | None = None
    """Validation metric to optimise; None: selection.metric (macro_f1 for classification)."""
    direction: Literal["maximize", "minimize"] | None = None
    """None: minimize for loss, maximize otherwise."""
    storage: str | None = None
    """Optuna storage URL shared by every worker: None is sqlite:///OUTPUT_DIR/sweep.db (one machine). Several
    machines: an RDB URL (postgresql://..., mysql://...) or a JournalStorage file on a shared filesystem
    (journal:///shared/path/sweep.log)."""
    study_name: str | None = None
    """None: the name of output_dir."""
    workers: int = 1
    """Worker processes started on this machine, each running trials against the one storage."""
    pruning: bool = True
    """Stop trials whose intermediate validation metric is below the median of earlier trials (MedianPruner)."""
    pruning_warmup_evaluations: int = 2
    """Evaluations of a trial before it may be pruned."""
    startup_trials: int = 5
    """Random trials before TPE sampling starts (and trials finished before pruning starts)."""
    first_trial_is_recipe: bool = True
    """Trial 0 runs the recipe's own value of every searched key (those inside their space), so the table shows
    on the same validation split whether the search beat the recipe as written."""
    heartbeat_seconds: int = 60
    """A running trial whose worker has not been heard from for 2x this long (killed) is marked failed and
    retried once with the same parameters, by the next worker that starts (sqlite/RDB/journal storage)."""


@dataclass
class DistillSection:
    """``task: distillation``: a classification-head student trained on a teacher run's soft labels.

    Loss per row: alpha * KL(teacher/T || student/T) * T^2 + (1 - alpha) * cross-entropy on the hard label (the hard
    part is skipped for unlabelled rows). The teacher's probabilities are computed once and cached in the run folder.
    """

    teacher: str = ""
    """A peftkit classification run folder (task classification, generative_classification or distillation) with
    the same label names as this recipe."""
    temperature: float = 2.0
    """Softens both distributions; the KL term is multiplied by T^2 so its gradients keep their scale."""
    alpha: float = 0.5
    """Weight of the soft-label (KL) term; 1 - alpha weighs the hard-label cross-entropy."""
    unlabelled_file: str | None = None
    """Extra training text without labels (a file with data.text_column only); the teacher labels it."""
    max_unlabelled_samples: int | None = None
    """Use a seeded random subset of this many unlabelled rows."""
    teacher_batch_size: int = 32
    int8: bool = True
    """After training: save the merged student (RUN/student) and an int8 copy (RUN/student-int8, torch dynamic
    quantization of its Linear layers), each measured for accuracy, size on disk and texts/s (export_report.json)."""


@dataclass
class AugmentSection:
    """``peftkit augment RECIPE``: an augmented copy of data.train_file; ``peftkit train`` ignores this section."""

    methods: list[str] = field(default_factory=lambda: ["edit"])
    """edit (random deletion, swap and insertion of in-sentence words) and/or paraphrase (a causal LM rewrites)."""
    copies: int = 1
    """New rows generated per original row and method."""
    seed: int = 42
    edit_fraction: float = 0.1
    """Share of a sentence's words each edit touches (at least one word)."""
    paraphrase_model: str = "packaged:smollm2-135m-instruct"
    """An instruction-tuned causal LM (hub id, folder, packaged:<name>) or a peftkit sft run folder."""
    max_new_tokens: int = 48
    teacher: str | None = None
    """A peftkit classification run folder: keep a generated row only if it predicts the row's label with at least
    min_confidence (the consistency filter). None: no filter."""
    min_confidence: float = 0.7
    max_rows: int | None = None
    """Augment only the first N training rows (after data.max_train_samples); None: all."""


@dataclass
class MultitaskSection:
    """Task multitask: how the ``tasks`` list is trained on one base model."""

    mode: Literal["shared"] = "shared"
    """shared: one adapter for every task, each asked with its own prompt template and label words (multi-task
    instruction tuning)."""
    mixing: Literal["proportional", "temperature"] = "proportional"
    """proportional: every task's training rows once (large tasks dominate). temperature: task i is drawn with
    probability n_i^(1/T) / sum_j n_j^(1/T), the same total number of examples, rows resampled with replacement
    where a task needs more than it has (T=1 is proportional; large T approaches uniform)."""
    temperature: float = 2.0
    """T of the temperature rule."""


@dataclass
class SubTask:
    """One task of a multitask recipe: its name (a folder name in the run) and its data section, written over
    the recipe's top-level ``data`` (shared keys such as max_length go there once)."""

    name: str = ""
    data: DataSection = field(default_factory=DataSection)


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
# gradient checkpointing; peftkit decides precision the same way for every task (peftkit/trainer/speed.py: bf16 autocast
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
    task: str = DEFAULT_TASK
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
    selection: SelectionSection = field(default_factory=SelectionSection)
    imbalance: ImbalanceSection = field(default_factory=ImbalanceSection)
    sweep: SweepSection = field(default_factory=SweepSection)
    distill: DistillSection = field(default_factory=DistillSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    multitask: MultitaskSection = field(default_factory=MultitaskSection)
    tasks: list[SubTask] = field(default_factory=list)
    """Task multitask: two or more generative classification tasks on this base (see SubTask)."""
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
    "selection": SelectionSection,
    "imbalance": ImbalanceSection,
    "sweep": SweepSection,
    "distill": DistillSection,
    "augment": AugmentSection,
    "multitask": MultitaskSection,
}
TOP_LEVEL = ("task", "output_dir", "overwrite_output_dir", "keep_checkpoints", *SECTIONS, "train", "tasks")


def checkpointing_enabled(train: dict[str, Any]) -> bool:
    """Activation (gradient) checkpointing as transformers resolves it: the new name wins, the old is an alias."""
    new = train.get("activation_checkpointing")
    return bool(new if new is not None else train.get("gradient_checkpointing"))

