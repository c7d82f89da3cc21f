"""Every shipped recipe (recursively under recipes/, and the built-in quickstart) loads and validates; hub data is
read from the development clone's local copies (tests/helpers/local_data.py), where they exist. The same recipes in
a bare clone, hub data offline: test_recipes_in_a_bare_clone.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftkit.errors import PeftkitError
from peftkit.recipe import load_recipe
from peftkit.recipe.arguments import DEFAULT_RECIPE
from peftkit.recipe.loading import read_yaml
from tests.conftest import REPO
from tests.helpers.local_data import has_local_copies, hub_datasets, load_with_local_copies

RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))
QUICKSTART = REPO / "peftkit" / "defaults" / DEFAULT_RECIPE
HUB_ONLY = "hub"  # recipes whose data or model come from a hub, with no local copy: they cannot be checked offline


def test_recipes_are_found():
    assert len(RECIPES) >= 4


@pytest.mark.parametrize("path", [*RECIPES, QUICKSTART], ids=lambda p: str(p.relative_to(REPO)))
def test_recipe_loads_validates_and_states_its_command(path: Path, monkeypatch):
    monkeypatch.chdir(REPO)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# ") and ("peftkit" in lines[0] or "accelerate launch" in lines[0]), \
        f"{path} must open with its launch command"
    recipe = load_recipe(path)
    if HUB_ONLY in path.stem:
        return
    if not has_local_copies(read_yaml(path)):
        pytest.skip(f"no local copy of its hub data here: {', '.join(hub_datasets(read_yaml(path)))}")
    recipe = load_with_local_copies(path)
    from peftkit.run import check_recipe_inputs

    if recipe.task == "distillation" and not Path(recipe.distill.teacher).exists():
        # a distillation recipe needs its teacher's run folder, which its header says how to train
        assert "peftkit train " in "\n".join(lines[:6])
        with pytest.raises(PeftkitError, match=r"distill.teacher: teacher run folder .* does not exist"):
            check_recipe_inputs(recipe)
        return
    summary = check_recipe_inputs(recipe)
    assert "recipe OK" in summary
