"""Build a small but real run folder, as `peftkit train` writes it, for card and push tests.

The adapter is a genuine PEFT LoRA adapter (SEQ_CLS) on a tiny random Llama, saved from a base loaded
from a LOCAL directory, so adapter_config.json points at a local path exactly as in peft#2124.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

BASE_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
LABELS = ["negative", "neutral", "positive"]

METRICS = {
    "accuracy": 0.8125,
    "macro_f1": 0.7983870967741935,
    "macro_precision": 0.8055555555555555,
    "macro_recall": 0.7962962962962963,
    "per_class": {
        "negative": {"precision": 5 / 6, "recall": 5 / 6, "f1": 5 / 6, "support": 6},
        "neutral": {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3},
        "positive": {"precision": 11 / 12, "recall": 8 / 9, "f1": 0.8951612903225806, "support": 7},
    },
    "confusion_matrix": [[5, 1, 0], [1, 2, 0], [0, 0, 7]],
    "labels": LABELS,
    "num_examples": 16,
    "split": "eval",
    "data_file": "/home/someone/data/sentiment_eval.jsonl",
}


def build_run(root: Path) -> Path:
    """Write RUN_DIR under `root` (base model saved alongside, as a local checkpoint) and return it."""
    base_dir = root / "local_base"
    run_dir = root / "run"
    _save_tiny_base(base_dir)
    _save_adapter(base_dir, run_dir / "adapter")
    _write_run_files(run_dir, base_dir)
    return run_dir


def _save_tiny_base(base_dir: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, pad_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(base_dir)


def _save_adapter(base_dir: Path, adapter_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForSequenceClassification

    id2label = dict(enumerate(LABELS))
    model = LlamaForSequenceClassification.from_pretrained(
        base_dir, num_labels=len(LABELS), id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    lora = LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    get_peft_model(model, lora).save_pretrained(adapter_dir)
    _tiny_tokenizer().save_pretrained(adapter_dir)


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{word: i + 2 for i, word in enumerate("good bad okay movie the".split())}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def _write_run_files(run_dir: Path, base_dir: Path) -> None:
    recipe = {
        "task": "classification",
        "output_dir": str(run_dir),
        "model": {"name_or_path": str(base_dir), "dtype": "float32"},
        "quantization": {"load_in_4bit": False, "load_in_8bit": False},
        "adapter": {"r": 2, "lora_alpha": 4, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
                    "use_dora": False, "use_rslora": False},
        "data": {"train_file": "/home/someone/data/sentiment_train.jsonl",
                 "eval_file": "/home/someone/data/sentiment_eval.jsonl",
                 "text_column": "text", "label_column": "label", "label_names": LABELS, "max_length": 128},
        "train": {"learning_rate": 0.0002, "num_train_epochs": 3, "per_device_train_batch_size": 8, "seed": 42},
        "evaluate": {"batch_size": 16},
    }
    summary = {
        "wall_time_s": 412.7, "peak_rss_mb": 2311.5, "train_runtime": 398.2, "global_step": 120,
        "trainable_params": 1234, "total_params": 135000000, "hardware": "CPU: 2 cores (test machine)",
        "peftkit_version": "0.1.0", "base_model_hub_id": BASE_HUB_ID,
    }
    id2label = dict(enumerate(LABELS))
    label_map = {"id2label": {str(k): v for k, v in id2label.items()}, "label2id": {v: k for k, v in id2label.items()}}
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    (run_dir / "metrics.json").write_text(json.dumps(METRICS, indent=2), encoding="utf-8")
    (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (run_dir / "label_map.json").write_text(json.dumps(label_map, indent=2), encoding="utf-8")
    (run_dir / "eval_report.txt").write_text("accuracy 0.8125\n", encoding="utf-8")
    (run_dir / "logs").mkdir()
    (run_dir / "checkpoints").mkdir()


def write_merged(run_dir: Path) -> Path:
    """Add RUN_DIR/merged as `peftkit merge` leaves it: merged weights, tokenizer and label map.

    Loads the adapter with the same call and label kwargs the model card recommends, so this also
    checks that advice against the installed peft.
    """
    from peft import AutoPeftModelForSequenceClassification

    id2label = dict(enumerate(LABELS))
    model = AutoPeftModelForSequenceClassification.from_pretrained(
        run_dir / "adapter", num_labels=len(LABELS), id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    merged = run_dir / "merged"
    model.merge_and_unload().save_pretrained(merged)
    _tiny_tokenizer().save_pretrained(merged)
    (merged / "label_map.json").write_text((run_dir / "label_map.json").read_text(), encoding="utf-8")
    return merged
