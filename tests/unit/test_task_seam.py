"""No module outside ``recipe/`` and ``tasks/`` decides by a task's name: it reads the task's traits.

A name comparison (``recipe.task == "classification"``) or a task list of its own (``("sft", "multitask")``)
is a fact about tasks kept in the wrong place: the next task would have to find and amend every one.
``peftkit/recipe/task_traits.py`` holds the facts; the syntax tree of every other module is searched for a
string that is a task's name, and for the recipe's own task lists imported by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

from peftkit.recipe import TASKS

PACKAGE = Path(__file__).resolve().parents[2] / "peftkit"
ALLOWED_FOLDERS = ("recipe", "tasks")
TASK_LISTS = ("TASKS", "CAUSAL_TASKS", "SFT_CONFIG_TASKS")


def task_name_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for each task-name string and each import of a recipe task list in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in TASKS:
            found.append((node.lineno, repr(node.value)))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("peftkit.recipe"):
            found += [(node.lineno, f"import {a.name}") for a in node.names if a.name in TASK_LISTS]
    return sorted(found)


def outside_modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(PACKAGE).parts[0] not in ALLOWED_FOLDERS]


def test_the_search_finds_comparisons_lists_and_imported_task_lists():
    snippet = '''
from peftkit.recipe import CAUSAL_TASKS, Recipe
if recipe.task == "classification":
    pass
HEADS = ("classification", "distillation")
if task in {"sft"} or task in ["multitask"]:
    pass
KIND = "generative_classification"
'''
    assert task_name_uses(snippet) == [(2, "import CAUSAL_TASKS"), (3, "'classification'"), (5, "'classification'"),
                                       (5, "'distillation'"), (6, "'multitask'"), (6, "'sft'"),
                                       (8, "'generative_classification'")]


def test_the_search_leaves_traits_and_other_strings_alone():
    snippet = '''
from peftkit.recipe.task_traits import traits_of
if traits_of(recipe.task).head:
    label = "classification head"  # a phrase, not a task name
'''
    assert task_name_uses(snippet) == []


def test_the_search_covers_the_command_folders_and_the_top():
    names = {p.relative_to(PACKAGE).parts[0] for p in outside_modules()}
    assert {"run.py", "cli.py", "merge", "serve", "push", "inference", "model", "data"} <= names
    assert not names & set(ALLOWED_FOLDERS)


def test_no_module_outside_recipe_and_tasks_names_a_task():
    leaks = [f"{p.relative_to(PACKAGE.parent)}:{line}: {what}"
             for p in outside_modules() for line, what in task_name_uses(p.read_text(encoding="utf-8"))]
    assert not leaks, "read peftkit.recipe.task_traits instead of naming tasks:\n" + "\n".join(leaks)
