"""A run folder written by an earlier peftkit (its recipe.yaml lacks sections added since) is still the same run:
rerunning or resuming it after an upgrade must not be refused as 'a different run'. A changed value still is."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from peftkit.errors import PeftkitError
from peftkit.recipe import load_recipe
from peftkit.runs.folder import open_run_dir
from peftkit.runs.layout import RECIPE_FILE
from tests.conftest import tiny_recipe, write_recipe


def _older_run_folder(tmp_path, sst2_small) -> tuple[Path, Path]:
    out = tmp_path / "run"
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe(Path("model"), sst2_small, out))
    resolved = load_recipe(str(path)).to_dict()
    for newer in ("distill", "augment", "multitask", "tasks", "selection"):   # sections an older version lacked
        resolved.pop(newer)
    resolved["evaluate"].pop("label_score")
    out.mkdir()
    (out / RECIPE_FILE).write_text(yaml.safe_dump(resolved), encoding="utf-8")
    return path, out


def test_a_run_folder_from_an_earlier_version_is_the_same_run(tmp_path, sst2_small, capsys):
    path, out = _older_run_folder(tmp_path, sst2_small)
    assert open_run_dir(load_recipe(str(path)), resume=False) == out
    said = capsys.readouterr()
    note = said.out + said.err
    assert "written by an earlier peftkit" in note and "evaluate.label_score" in note and "distill" in note


def test_a_changed_value_is_still_a_different_run(tmp_path, sst2_small):
    path, out = _older_run_folder(tmp_path, sst2_small)
    with pytest.raises(PeftkitError, match=r"different run \(changed: adapter\.r\)"):
        open_run_dir(load_recipe(str(path), overrides=["adapter.r=8"]), resume=False)
