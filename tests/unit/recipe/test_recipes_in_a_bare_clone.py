"""The shipped recipes where a user has them: a copy of the repository's recipes/ with no ../shared beside it.

Every data file a recipe names ships with peftkit (``builtin:``) or is a hub dataset. Offline, a hub-data recipe's
`validate` says exactly what it would download (dataset id, splits, the columns it reads); the others validate, and
the builtin-data ones train a couple of steps (one per kind of run here; every one of them in the slow tier).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from peftkit.data.files import builtin_data_dir, required_columns
from peftkit.errors import PeftkitError
from peftkit.recipe import load_recipe
from peftkit.recipe.loading import read_yaml
from tests.conftest import REPO
from tests.helpers.local_data import data_sections, hub_datasets

RECIPES = sorted(p.relative_to(REPO / "recipes") for p in (REPO / "recipes").rglob("*.yaml"))
DATA_FILE_KEYS = ("train_file", "eval_file")
# validation reads every row it is given; a subset keeps the all-of-SST-2 recipes cheap and checks the same keys
QUICK = ["data.max_train_samples=200", "data.max_eval_samples=100"]
TRAIN_STEPS = ["train.max_steps=2", "data.max_train_samples=16", "data.max_eval_samples=8",
               "train.per_device_train_batch_size=4", "train.report_to=[]"]
# one recipe per kind of run trains in the default tier (the budget: ~30 s); all of them in the slow tier
TRAINED_BY_DEFAULT = ("sst2/minilm_lora_cls.yaml", "sst2/smollm2_lora_gen.yaml")
BUILTIN_DATA_BUDGET = 6_000_000  # bytes under peftkit/defaults/data: what the wheel may carry


def is_hub(name: Path) -> bool:
    return bool(hub_datasets(read_yaml(REPO / "recipes" / name)))


def is_distillation(name: Path) -> bool:
    return read_yaml(REPO / "recipes" / name).get("task") == "distillation"


BUILTIN = [n for n in RECIPES if not is_hub(n)]
TRAINABLE = [n for n in BUILTIN if not is_distillation(n)]  # distillation needs its teacher's run folder


@pytest.fixture(scope="module")
def bare_clone(tmp_path_factory) -> Path:
    """recipes/ and accelerate_configs/ copied where no ../shared exists (the package is the installed one)."""
    clone = tmp_path_factory.mktemp("bare") / "clone"
    for folder in ("recipes", "accelerate_configs"):
        shutil.copytree(REPO / folder, clone / folder)
    assert not (clone.parent / "shared").exists() and not (clone.parent.parent / "shared").exists()
    return clone


def test_every_recipe_names_builtin_or_hub_data():
    for name in RECIPES:
        raw = read_yaml(REPO / "recipes" / name)
        files = [data[key] for data in data_sections(raw) for key in DATA_FILE_KEYS if data.get(key)]
        files += [raw["distill"]["unlabelled_file"]] if (raw.get("distill") or {}).get("unlabelled_file") else []
        assert all(f.startswith("builtin:") for f in files), f"{name}: {files} are not shipped with peftkit"
        assert files or hub_datasets(raw), f"{name} names no data"


@pytest.mark.parametrize("name", RECIPES, ids=str)
def test_recipe_validates_or_says_what_it_would_download(name, bare_clone, monkeypatch):
    from peftkit.run import check_recipe_inputs

    monkeypatch.chdir(bare_clone)
    recipe = load_recipe(Path("recipes") / name, QUICK)
    if is_distillation(name):  # its teacher is a run folder its header says how to train
        with pytest.raises(PeftkitError, match=r"distill.teacher: teacher run folder .* does not exist"):
            check_recipe_inputs(recipe)
        return
    if not is_hub(name):
        assert "recipe OK" in check_recipe_inputs(recipe)
        return
    try:
        summary = check_recipe_inputs(recipe)
    except PeftkitError as e:
        message = str(e)
    else:  # this machine's hub cache holds the dataset: then it validates like local data
        assert "recipe OK" in summary
        return
    data = recipe.tasks[-1].data if recipe.tasks else recipe.data
    assert "Hugging Face Hub is offline" in message, message
    assert f"downloads {data.dataset}," in message
    assert f"'{data.train_split}' and '{data.eval_split}'" in message
    assert f"reads the columns {', '.join(dict.fromkeys(c for c, _ in required_columns(data)))}" in message


def test_the_ag_news_message_in_full(bare_clone, monkeypatch):
    from peftkit.run import check_recipe_inputs

    monkeypatch.chdir(bare_clone)
    with pytest.raises(PeftkitError) as raised:
        check_recipe_inputs(load_recipe("recipes/agnews/minilm_lora_cls.yaml"))
    if "offline" not in str(raised.value):
        pytest.skip("fancyzhx/ag_news is in this machine's hub cache")
    assert str(raised.value) == (
        "data.dataset 'fancyzhx/ag_news' is not in the local cache and the Hugging Face Hub is offline "
        "(HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set): with network, peftkit downloads fancyzhx/ag_news, "
        "splits 'train' and 'test' (an eval split the dataset lacks is held out from train instead), and reads the "
        "columns text, label; or set data.train_file (and data.eval_file) to local copies")


def train_two_steps(name: Path, clone: Path, monkeypatch) -> dict:
    from peftkit.run import run

    monkeypatch.chdir(clone)
    output = f"output_dir=runs/{name.with_suffix('').as_posix().replace('/', '-')}"
    return run(load_recipe(Path("recipes") / name, [*TRAIN_STEPS, output]))


@pytest.mark.parametrize("name", [Path(n) for n in TRAINED_BY_DEFAULT], ids=str)
def test_builtin_data_recipe_trains(name, bare_clone, monkeypatch, one_torch_thread):
    assert name in TRAINABLE
    metrics = train_two_steps(name, bare_clone, monkeypatch)
    assert metrics["num_examples"] == 8 and metrics["data_file"] == "builtin:sst2/dev.tsv"


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TRAINABLE if str(n) not in TRAINED_BY_DEFAULT], ids=str)
def test_every_other_builtin_data_recipe_trains(name, bare_clone, monkeypatch, one_torch_thread):
    metrics = train_two_steps(name, bare_clone, monkeypatch)
    assert metrics["num_examples"] == 8 and metrics["data_file"] == "builtin:sst2/dev.tsv"


def test_builtin_data_stays_in_its_budget_and_states_its_source():
    root = builtin_data_dir()
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total <= BUILTIN_DATA_BUDGET, f"{total:,} bytes under {root}"
    for folder in (p for p in root.iterdir() if p.is_dir()):
        source = (folder / "SOURCE.md").read_text(encoding="utf-8")
        assert "Source" in source and "licence" in source, folder
