"""Hostile inputs through the real CLI entry point (`peftkit.cli.main`, in-process): data files, model folders,
output folders, overrides and run folders that are wrong in the ways real ones are.

Each case must give ONE clear line (exit 2, no traceback), before any model is loaded (the loaders are replaced by
a tripwire), and must write nothing: every file under the test's folder, including a copied good run folder with
checkpoints, adapter and metrics, is byte-identical afterwards.

Malformed recipes are in test_bad_recipes.py; a full disk (RLIMIT_FSIZE) in tests/e2e/test_never_lose_a_run.py;
pickled adapters and custom model code in test_safe_loading.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import peftkit.model.base
import peftkit.run
import peftkit.tasks.classification
from peftkit.cli import main
from tests.conftest import tiny_recipe, write_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass
class Ctx:
    tmp: Path
    model: Path
    data: dict[str, Path]
    good_recipe: Path
    good_run: Path

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path

    def recipe(self, out: str = "out", **sections) -> Path:
        """A good recipe (output in tmp/out) with `sections` merged in."""
        recipe = tiny_recipe(self.model, self.data, self.tmp / out)
        for key, value in sections.items():
            if isinstance(value, dict):
                recipe.setdefault(key, {}).update(value)
            else:
                recipe[key] = value
        return write_recipe(self.tmp / "recipe.yaml", recipe)

    def train(self, *overrides: str, **sections) -> list[str]:
        return ["train", str(self.recipe(**sections)), *overrides]

    def run_copy(self, moved: bool = False) -> tuple[Path, Path]:
        """A copy of a finished run (checkpoints, adapter, metrics), its recipe and its data files, inside tmp.

        The run's recorded recipe is rewritten to the copy's paths, as if it had been trained here; with
        `moved`, it still names the original places (a run folder someone moved).
        """
        run = Path(shutil.copytree(self.good_run, self.tmp / "run"))
        recipe = yaml.safe_load(self.good_recipe.read_text())
        recipe["output_dir"] = str(run)
        if not moved:
            recorded = yaml.safe_load((run / "recipe.yaml").read_text())
            (self.tmp / "data").mkdir()
            for key in ("train_file", "eval_file"):
                recipe["data"][key] = recorded["data"][key] = shutil.copy(recipe["data"][key], self.tmp / "data")
            recorded["output_dir"] = recipe["output_dir"]
            write_recipe(run / "recipe.yaml", recorded)
        return write_recipe(self.tmp / "run-recipe.yaml", recipe), run

    def edited_run_recipe(self, **changes) -> Path:
        path, _ = self.run_copy()
        recipe = yaml.safe_load(path.read_text())
        for dotted, value in changes.items():
            section, key = dotted.split("__")
            recipe[section][key] = value
        return write_recipe(path, recipe)

    def model_folder(self, name: str, drop: tuple[str, ...] = (), add: dict[str, bytes] | None = None) -> Path:
        folder = Path(shutil.copytree(self.model, self.tmp / name))
        for file in drop:
            (folder / file).unlink()
        for file, content in (add or {}).items():
            (folder / file).write_bytes(content)
        return folder


def pickle_only_model(c: Ctx) -> Path:
    folder = c.model_folder("pickled", drop=("model.safetensors",))
    torch.save(load_file(c.model / "model.safetensors"), folder / "pytorch_model.bin")
    return folder


def custom_code_model(c: Ctx) -> Path:
    config = json.loads((c.model / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "modeling_evil.EvilConfig"})
    return c.model_folder("evil", add={"config.json": json.dumps(config).encode(),
                                       "modeling_evil.py": b"raise SystemExit('custom code ran')\n"})


def parquet_bytes() -> bytes:
    return b"PAR1" + b"\x00garbage, not a parquet footer\x00" * 4 + b"PAR1"


def good_run_data_emptied(c: Ctx) -> list[str]:
    """The finished run's own recipe, --resume, but its train file has since been truncated."""
    recipe, _ = c.run_copy()
    c.write("data/train.tsv", "")
    return ["train", str(recipe), "--resume"]


def folder_as_data_file(c: Ctx) -> list[str]:
    (c.tmp / "folder.tsv").mkdir()
    return c.train(data={"train_file": str(c.tmp / "folder.tsv")})


def foreign_output_folder(c: Ctx) -> list[str]:
    (c.tmp / "docs").mkdir()
    c.write("docs/thesis.tex", "years of work")
    return c.train(output_dir=str(c.tmp / "docs"))


def run_recipe_edited_badly(c: Ctx) -> list[str]:
    _, run = c.run_copy()
    (run / "recipe.yaml").write_text((run / "recipe.yaml").read_text().replace("  r: 4\n", "  rank: 4\n"))
    return ["evaluate", str(run)]


def run_without(c: Ctx, *names: str) -> Path:
    _, run = c.run_copy()
    for name in names:
        target = run / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return run


TSV_HEADER = "sentence\tlabel\n"

# (case id, argv builder, words the one error line must contain)
CASES = [
    # ---- data files ----------------------------------------------------------------------------------------
    ("empty-data-file", lambda c: c.train(data={"train_file": str(c.write("e.tsv", ""))}), "e.tsv: the file is empty"),
    ("header-only", lambda c: c.train(data={"train_file": str(c.write("h.tsv", TSV_HEADER))}),
     "h.tsv: no data rows (only a header?)"),
    ("latin-1-encoding", lambda c: c.train(data={"train_file": str(c.write("l.tsv", (TSV_HEADER + "café crème\t1\n")
                                                                          .encode("latin-1")))}),
     "l.tsv: line 2 is not UTF-8 text (column 4, byte 18 of the file: b'\\xe9 cr', invalid continuation byte); "
     "re-save it as UTF-8"),
    ("utf-16-encoding", lambda c: c.train(data={"train_file": str(c.write("u.tsv", (TSV_HEADER + "good\t1\n")
                                                                          .encode("utf-16")))}),
     "u.tsv: line 1 is not UTF-8 text (column 1, byte 0"),
    ("eval-file-missing-text-column",
     lambda c: c.train(data={"eval_file": str(c.write("ev.tsv", "text\tlabel\nok\t1\n"))}),
     "ev.tsv: column 'sentence' (data.text_column) not found; the file has columns text, label"),
    ("ragged-row", lambda c: c.train(data={"train_file": str(c.write("r.tsv", TSV_HEADER + "a\t1\nb\t0\textra\n"))}),
     "r.tsv: cannot be read as tsv: line 3 has 3 fields, the header has 2"),
    ("jsonl-broken-line",
     lambda c: c.train(data={"train_file": str(c.write("b.jsonl", '{"sentence": "a", "label": 1}\n'
                                                                  '{"sentence": "b", "label": \n'))}),
     "b.jsonl: cannot be read as json: line 2 is not JSON"),
    ("json-array-of-strings", lambda c: c.train(data={"train_file": str(c.write("s.json", '["a", "b"]'))}),
     "s.json: cannot be read as json: every line must be a JSON object"),
    ("corrupt-parquet", lambda c: c.train(data={"train_file": str(c.write("p.parquet", parquet_bytes()))}),
     "p.parquet: cannot be read as parquet"),
    ("label-outside-set",
     lambda c: c.train(data={"train_file": str(c.write("o.tsv", TSV_HEADER + "a\t1\nb\t0\nc\t7\n")),
                             "invalid_rows": "error"}),
     "o.tsv: 1 bad rows (0 empty text, 1 unknown label); first: row 3: label '7' not in ['negative', 'positive']"),
    ("every-row-invalid", lambda c: c.train(data={"train_file": str(c.write("x.tsv", TSV_HEADER + "a\t5\n\t1\n"))}),
     "x.tsv: no usable rows left (2 skipped)"),
    ("one-distinct-label", lambda c: c.train(data={"train_file": str(c.write("one.tsv", TSV_HEADER + "a\t1\nb\t1\n")),
                                                   "eval_file": None, "label_names": None}),
     "column 'label' has fewer than two distinct labels (['1'])"),
    ("data-path-is-a-folder", folder_as_data_file, "folder.tsv is a folder, not a data file"),
    ("eval-file-missing", lambda c: c.train(data={"eval_file": str(c.tmp / "nope.tsv")}),
     "data file not found: "),
    # ---- model folders -------------------------------------------------------------------------------------
    ("model-path-missing", lambda c: c.train(model={"name_or_path": str(c.tmp / "no-model")}),
     "model.name_or_path: local folder "),
    ("model-folder-without-config",
     lambda c: c.train(model={"name_or_path": str(c.model_folder("m", drop=("config.json",)))}),
     "has no config.json; is it a transformers model folder?"),
    ("model-path-is-a-file", lambda c: c.train(model={"name_or_path": str(c.model / "config.json")}),
     "config.json is a file; give the model's folder"),
    ("model-only-pickle-weights", lambda c: c.train(model={"name_or_path": str(pickle_only_model(c))}),
     "has only pickle weights (pytorch_model.bin); pickles can run code when loaded"),
    ("model-config-not-json",
     lambda c: c.train(model={"name_or_path": str(c.model_folder("j", add={"config.json": b"{oops"}))}),
     "config.json cannot be read as JSON"),
    ("model-needs-custom-code", lambda c: c.train(model={"name_or_path": str(custom_code_model(c))}),
     "needs its own Python code to load (modeling_evil.py; model type 'evil' is not built into transformers)"),
    # ---- output folders ------------------------------------------------------------------------------------
    ("output-parent-is-a-file", lambda c: c.train(output_dir=str(c.write("plain-file", "x") / "run")),
     "plain-file/run is not writable (Not a directory); choose another folder"),
    ("output-dir-is-a-file", lambda c: c.train(output_dir=str(c.write("out-file", "x"))),
     "out-file is a file, not a folder; choose another output_dir"),
    ("output-holds-a-different-run", lambda c: ["train", str(c.edited_run_recipe(adapter__r=8))],
     "already holds a different run (changed: adapter.r). Choose another output_dir"),
    ("output-is-a-foreign-folder", foreign_output_folder, "docs exists and is not a peftkit run folder"),
    ("checkpoints-without-resume", lambda c: ["train", str(c.run_copy()[0])],
     "already has checkpoints (latest: checkpoint-2). Continue that run with `peftkit train"),
    ("resume-with-a-changed-recipe",
     lambda c: ["train", str(c.edited_run_recipe(train__learning_rate=1e-3)), "--resume"],
     "already holds a different run (changed: train.learning_rate)"),
    ("finished-run-but-data-file-emptied", good_run_data_emptied, "data/train.tsv: the file is empty"),
    # ---- overrides and the command line ---------------------------------------------------------------------
    ("override-without-equals", lambda c: c.train("train.max_steps"),
     "override 'train.max_steps': expected section.key=value, e.g. train.learning_rate=1e-4"),
    ("override-into-a-value", lambda c: c.train("data.train_file.path=x.tsv"),
     "override 'data.train_file.path=x.tsv': 'train_file' is not a section"),
    ("override-into-a-top-level-value", lambda c: c.train("output_dir.name=x"),
     "override 'output_dir.name=x': 'output_dir' is not a section"),
    ("override-empty-key", lambda c: c.train("train..max_steps=3"), "override 'train..max_steps=3': empty key"),
    ("override-section-with-a-value", lambda c: c.train("model=gpt2"), "'model' must be a section"),
    ("recipe-is-a-folder", lambda c: ["train", str(c.tmp)], "is a folder; give the path to a .yaml recipe file"),
    # ---- evaluate -------------------------------------------------------------------------------------------
    ("evaluate-not-a-run-folder", lambda c: ["evaluate", str(c.tmp)], "is not a peftkit run folder (no recipe.yaml)"),
    ("evaluate-run-without-adapter", lambda c: ["evaluate", str(run_without(c, "adapter"))],
     "has no trained adapter (adapter/adapter_config.json); did the train run finish?"),
    ("evaluate-adapter-without-weights",
     lambda c: ["evaluate", str(run_without(c, "adapter/adapter_model.safetensors"))],
     "has no adapter weights (adapter_model.safetensors)"),
    ("evaluate-data-missing", lambda c: ["evaluate", str(c.run_copy()[1]), "--data", str(c.tmp / "none.tsv")],
     "data file not found"),
    ("evaluate-data-wrong-columns", lambda c: ["evaluate", str(c.run_copy()[1]), "--data",
                                               str(c.write("w.tsv", "review\tstars\nok\t1\n"))],
     "w.tsv: column 'sentence' (data.text_column) not found; the file has columns review, stars"),
    ("evaluate-run-recipe-edited-badly", run_recipe_edited_badly,
     "run/recipe.yaml: unknown key 'adapter.rank'; known keys: r, lora_alpha"),
]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def ctx(tmp_path, tiny_llama_dir, sst2_small, tiny_run):
    return Ctx(tmp_path, tiny_llama_dir, sst2_small, *tiny_run)


@pytest.fixture
def no_model_loading(monkeypatch):
    """A tripwire: these errors must come before any model is loaded. The tokenizer may load: since the one-checklist
    refactor `train` reads (and tokenizes) the data with it, and it is cheap."""

    def tripwire(*args, **kwargs):
        raise AssertionError("a model was loaded before the error was found")

    for module, name in ((peftkit.tasks.classification, "load_classifier"),
                         (peftkit.model.base, "load_trained_classifier"), (peftkit.model.base, "_load_model")):
        monkeypatch.setattr(module, name, tripwire)


@pytest.mark.parametrize("case_id,build,expected", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_gets_one_clear_line_and_changes_nothing(case_id, build, expected, ctx, no_model_loading,
                                                               capsys):
    argv = build(ctx)
    before = snapshot(ctx.tmp)
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "gemm_4bit_forward" not in line]
    assert len(err) == 1 and err[0].startswith("peftkit: error: "), err
    assert expected in err[0], err[0]
    assert snapshot(ctx.tmp) == before, "a failing invocation wrote or changed files"


def test_there_are_at_least_40_bad_input_cases_overall():
    from tests.unit.recipe.test_bad_recipes import CASES as RECIPE_CASES

    assert len(CASES) + len(RECIPE_CASES) >= 40


def test_resume_of_a_finished_and_moved_run_changes_no_result(ctx, capsys):
    """`--resume` is safe to put in every job script: on a finished run it trains nothing and rewrites the same.

    The folder was also moved: output_dir says where a run is, not what it computes, so a moved run is the same
    run (it used to be 'a different run (changed: output_dir)', and the suggested overwrite_output_dir: true
    would have deleted it).
    """
    recipe, run = ctx.run_copy(moved=True)
    assert yaml.safe_load((run / "recipe.yaml").read_text())["output_dir"] != str(run)
    names = ("adapter/adapter_model.safetensors", "metrics.json", "label_map.json")
    before = {name: (run / name).read_bytes() for name in names}
    summary = json.loads((run / "train_summary.json").read_text())
    assert main(["train", str(recipe), "--resume"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert {name: (run / name).read_bytes() for name in names} == before
    after = json.loads((run / "train_summary.json").read_text())
    assert (after["global_step"], after["train_loss"]) == (summary["global_step"], summary["train_loss"])


@pytest.mark.parametrize("suffix,content", [
    (".tsv", "\ufeffsentence\tlabel\ngood film\t1\nbad film\t0\n"),
    (".jsonl", '\ufeff{"sentence": "good film", "label": 1}\n{"sentence": "bad film", "label": 0}\n'),
])
def test_a_byte_order_mark_is_not_part_of_the_first_column(ctx, suffix, content, capsys):
    """Excel and Notepad save UTF-8 with a BOM; it used to become part of the first column's name ('\\ufeffsentence'
    not found, printed invisibly as 'sentence')."""
    train_file = ctx.write(f"bom{suffix}", content)
    assert main(["validate", str(ctx.recipe(data={"train_file": str(train_file)}))]) == 0
    assert "train: 2 rows used of 2" in capsys.readouterr().out


def test_a_run_folder_in_use_by_another_process_is_refused(ctx, no_model_loading, capsys):
    """E.g. the ranks of an `accelerate launch` that was killed with -9 keep running (tests/distributed): a second
    `peftkit train --resume` on their folder must not write into it (nor delete their half-written checkpoint)."""
    import subprocess
    import sys

    recipe, run = ctx.run_copy()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from peftkit.runs.folder import hold_run_lock; hold_run_lock(Path(sys.argv[1])); "
                               "print('locked', flush=True); time.sleep(120)", str(run)],
                              cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(ctx.tmp)
        assert main(["train", str(recipe), "--resume"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err == (f"peftkit: error: output_dir {run} is in use by another peftkit process (pid {holder.pid}); "
                       "wait for it to finish or stop it (an `accelerate launch` killed with -9 leaves its ranks "
                       "running). Two runs writing one folder would corrupt it")
        assert snapshot(ctx.tmp) == before
    finally:
        holder.kill()
        holder.wait()
    from peftkit.runs.folder import hold_run_lock

    hold_run_lock(run)  # the lock died with its process: nothing stale is left
