"""Every task goes through one checklist: each registered task module provides the whole interface."""

from __future__ import annotations

import inspect

import pytest

from peftkit.errors import PeftkitError
from peftkit.recipe import TASKS
from peftkit.tasks import REGISTRY, task_for

INTERFACE = ("check_inputs", "read_data", "prepare_data", "training_arguments", "load_model", "build_trainer",
             "training_facts", "evaluate", "save_metrics", "evaluate_run", "card")


def test_every_recipe_task_has_a_module_and_no_module_is_unreachable():
    assert set(REGISTRY) == set(TASKS)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_task_module_provides_the_interface(name):
    module = task_for(name)
    assert module.PEFT_TASK_TYPE in ("SEQ_CLS", "CAUSAL_LM")
    missing = [f for f in INTERFACE if not inspect.isfunction(getattr(module, f, None))]
    assert not missing, f"{module.__name__} lacks {missing}"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_task_module_trains_the_adapter_type_its_traits_state(name):
    from peftkit.recipe.task_traits import traits_of

    assert task_for(name).PEFT_TASK_TYPE == traits_of(name).peft_task_type


def test_the_interface_document_lists_exactly_these_functions():
    from peftkit.tasks import interface

    documented = {line.split("(")[0].strip("`") for line in interface.__doc__.splitlines() if line.startswith("``")}
    assert documented == {*INTERFACE, "PEFT_TASK_TYPE``"} or documented == {*INTERFACE, "PEFT_TASK_TYPE"}


def test_unknown_task_is_a_clear_error():
    with pytest.raises(PeftkitError, match="unknown task 'regression'; known tasks: classification"):
        task_for("regression")


def test_the_checklist_fits_on_a_screen():
    from peftkit import run

    lines = inspect.getsource(run.run).splitlines()
    assert len(lines) <= 80, f"run() is {len(lines)} lines: keep task specifics in peftkit/tasks"
