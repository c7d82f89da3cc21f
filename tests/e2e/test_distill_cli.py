"""`peftkit train` with task: distillation and `peftkit augment`, through the real command, on tiny models.

The teacher is conftest's finished tiny run (a classification head); the student distils it with unlabelled text,
then is exported as a plain and an int8 model. A rerun reuses the cached soft labels. `peftkit augment` writes edits
beside the training file, refuses eval leakage and filters with the same teacher.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from peftkit.cli import main
from tests.conftest import SST2, run_cli, tiny_recipe, write_recipe


def unlabelled_file(tmp: Path) -> Path:
    lines = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()[200:232]
    path = tmp / "unlabelled.tsv"
    path.write_text("sentence\n" + "\n".join(line.split("\t")[0] for line in lines) + "\n", encoding="utf-8")
    return path


def test_distillation_trains_exports_and_reuses_the_teacher_cache(tiny_run, tiny_llama_dir, tmp_path, capsys,
                                                                  one_torch_thread):
    teacher_recipe, teacher_dir = tiny_run
    data = {name: Path(shutil.copy(teacher_dir.parent / f"{name}.tsv", tmp_path / f"{name}.tsv"))
            for name in ("train", "dev")}
    recipe = tiny_recipe(tiny_llama_dir, data, tmp_path / "student", task="distillation",
                         distill={"teacher": str(teacher_dir), "unlabelled_file": str(unlabelled_file(tmp_path)),
                                  "temperature": 3.0, "alpha": 0.7})
    recipe["train"]["bf16"] = False  # evaluation and export both in float32, so their accuracies are comparable
    path = write_recipe(tmp_path / "distill.yaml", recipe)
    result = run_cli("train", str(path), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "student"
    assert "teacher soft labels: scoring 128 texts" in result.stdout + result.stderr  # 96 labelled + 32 unlabelled
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["distillation"]["unlabelled_rows"] == 32 and summary["distillation"]["alpha"] == 0.7
    report = json.loads((run / "export_report.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    # the merged plain model predicts what the adapter model predicted when the run evaluated it
    assert report["float32"]["accuracy"] == metrics["accuracy"]
    assert (run / "student" / "model.safetensors").is_file()
    assert (run / "student-int8" / "model_int8.safetensors").is_file()
    for name in ("float32", "int8"):
        assert report[name]["size_bytes"] > 0 and report[name]["texts_per_second"] > 0
    cache = (run / "teacher_soft_labels.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["train", str(path)]) == 0  # the same run again: the teacher is not asked twice
    assert "teacher soft labels: reused" in capsys.readouterr().out
    assert (run / "teacher_soft_labels.safetensors").stat().st_mtime_ns == cache


def test_distillation_refuses_a_teacher_with_other_labels_before_loading(tiny_run, tiny_llama_dir, tmp_path):
    _, teacher_dir = tiny_run
    data = {name: teacher_dir.parent / f"{name}.tsv" for name in ("train", "dev")}
    recipe = tiny_recipe(tiny_llama_dir, data, tmp_path / "student", task="distillation",
                         distill={"teacher": str(teacher_dir)})
    recipe["data"]["label_names"] = ["positive", "negative"]
    assert main(["train", str(write_recipe(tmp_path / "r.yaml", recipe))]) == 2
    assert not (tmp_path / "student").exists()  # refused before the run folder was made


def test_augment_writes_edits_beside_the_training_file(tiny_run, tiny_llama_dir, tmp_path, capsys, one_torch_thread):
    _, teacher_dir = tiny_run
    train = tmp_path / "train.tsv"
    shutil.copy(teacher_dir.parent / "train.tsv", train)
    dev = tmp_path / "dev.tsv"
    first = train.read_text(encoding="utf-8").splitlines()[1].split("\t")[0]
    dev.write_text(f"sentence\tlabel\n{first.upper()} .\t0\n", encoding="utf-8")  # a training row is also in eval
    recipe = tiny_recipe(tiny_llama_dir, {"train": train, "dev": dev}, tmp_path / "run",
                         augment={"methods": ["edit"], "copies": 2, "seed": 3})
    path = write_recipe(tmp_path / "aug.yaml", recipe)
    assert main(["augment", str(path)]) == 0
    out = tmp_path / "train.augmented.tsv"
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "sentence\tlabel\tsource"
    sources = [line.split("\t")[2] for line in lines[1:]]
    assert sources.count("original") == 96 and all(s.startswith(("original", "edit:")) for s in sources)
    report = json.loads(Path(f"{out}.report.json").read_text())
    assert report["original_rows_equal_to_eval"] == 1
    assert report["per_method"]["edit"]["generated"] == 192
    assert report["per_method"]["edit"]["kept"] == len(lines) - 1 - 96
    assert "original rows" in capsys.readouterr().out
    # the augmented file trains as it is (same columns, labels as names); and the teacher filter drops rows
    assert main(["validate", str(path), f"data.train_file={out}"]) == 0
    assert main(["augment", str(path), f"augment.teacher={teacher_dir}", "augment.min_confidence=0.99",
                 "--out", str(tmp_path / "filtered.tsv")]) == 0
    filtered = json.loads((tmp_path / "filtered.tsv.report.json").read_text())["per_method"]["edit"]
    assert filtered["dropped_low_confidence"] > 0
    assert filtered["kept"] + filtered["dropped_low_confidence"] == report["per_method"]["edit"]["kept"]


@pytest.mark.slow
def test_real_models_shipped_recipes_teacher_student_and_augment(tmp_path):
    """A real small run end to end with the shipped recipes and packaged models: a MiniLM head teacher on 64 SST-2
    rows, the shipped distillation recipe's student (with unlabelled text) distilled from it and exported as float32
    and int8, and `peftkit augment` on the shipped recipe. Small enough to run in about a minute of CPU."""
    small = ["data.max_train_samples=64", "data.max_eval_samples=64", "train.num_train_epochs=1",
             "train.per_device_train_batch_size=16", "train.report_to=[]"]
    teacher = tmp_path / "teacher"
    result = run_cli("train", "recipes/sst2/minilm_lora_cls.yaml", f"output_dir={teacher}", *small,
                     env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    student = tmp_path / "student"
    result = run_cli("train", "recipes/sst2/minilm_distill_smollm2.yaml", f"output_dir={student}",
                     f"distill.teacher={teacher}", "distill.max_unlabelled_samples=32", *small,
                     env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "teacher soft labels: scoring 96 texts" in result.stdout + result.stderr   # 64 labelled + 32 unlabelled
    report = json.loads((student / "export_report.json").read_text())
    assert report["eval_examples"] == 64 and 0 <= report["int8"]["accuracy"] <= 1
    assert report["int8"]["size_bytes"] < report["float32"]["size_bytes"]
    out = tmp_path / "augmented.tsv"
    result = run_cli("augment", "recipes/sst2/minilm_lora_cls.yaml", "data.max_train_samples=32", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = out.read_text(encoding="utf-8").splitlines()
    assert rows[0].split("\t")[-1] == "source" and sum(r.endswith("\toriginal") for r in rows) == 32
    assert any("\tedit:" in r for r in rows)
