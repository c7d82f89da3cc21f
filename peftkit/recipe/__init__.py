"""Recipes: small typed sections, one per concern, with every default in `sections.py`.

A recipe is YAML. ``load_recipe(path, overrides)`` reads it, applies ``section.key=value`` overrides,
rejects unknown keys (with a "did you mean"), checks types and impossible combinations, and returns a
validated ``Recipe``, all before anything heavy is imported or loaded.

The ``train`` section is not redeclared here: its keys are ``transformers.TrainingArguments`` fields
(``trl.SFTConfig`` for causal-LM tasks) and go straight through, so users keep the names they know.

Also here, because every floor reads them: ``task_traits`` (the facts of each task, which the commands read
instead of comparing task names) and ``arguments`` (the ``RECIPE [section.key=value ...]`` command-line
arguments). Imports: `peftkit.errors` only.
"""

from peftkit.recipe.checks import check_template, validate, validate_causal
from peftkit.recipe.loading import (
                                    apply_override,
                                    build_section,
                                    build_train,
                                    coerce,
                                    describe,
                                    load_recipe,
                                    parse_yaml_mapping,
                                    read_yaml,
                                    recipe_from_dict,
                                    reject_unknown,
                                    training_argument_fields,
)
from peftkit.recipe.sections import (
                                    CAUSAL_TASKS,
                                    DTYPES,
                                    EXACT_PACKING_ATTENTION,
                                    SECTIONS,
                                    SFT_FORMATS,
                                    SFT_TRAIN_DEFAULTS,
                                    SFT_TRAIN_RESERVED,
                                    TASKS,
                                    TOP_LEVEL,
                                    TRAIN_DEFAULTS,
                                    TRAIN_RESERVED,
                                    AdapterSection,
                                    DataSection,
                                    EvaluateSection,
                                    MergeSection,
                                    ModelSection,
                                    QuantizationSection,
                                    Recipe,
                                    SafetySection,
                                    checkpointing_enabled,
)
