"""Reading a recipe: YAML, ``section.key=value`` overrides, unknown keys and types, then the checks."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from peftkit.errors import PeftkitError
from peftkit.recipe.checks import validate
from peftkit.recipe.sections import (
    EXACT_PACKING_ATTENTION,
    SECTIONS,
    SFT_CONFIG_TASKS,
    SFT_TRAIN_DEFAULTS,
    SFT_TRAIN_RESERVED,
    TOP_LEVEL,
    TRAIN_DEFAULTS,
    TRAIN_RESERVED,
    DataSection,
    Recipe,
    SubTask,
)


def load_recipe(path: str | os.PathLike | None, overrides: list[str] = ()) -> Recipe:
    """Read, override, type-check and validate a recipe. Raises PeftkitError naming the key or file."""
    raw = read_yaml(path) if path is not None else {}
    for item in overrides:
        apply_override(raw, item)
    recipe = recipe_from_dict(raw, where=str(path) if path else "<recipe>")
    recipe.source = str(path) if path else None
    validate(recipe)
    return recipe


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        found = sorted(q.name for q in p.iterdir() if q.suffix in (".yaml", ".yml"))
        inside = f" (it holds {', '.join(found[:5])}{', ...' if len(found) > 5 else ''})" if found else ""
        raise PeftkitError(f"recipe {p} is a folder{inside}; give the path to a .yaml recipe file")
    if not p.is_file():
        raise PeftkitError(f"recipe file not found: {p} (give the path to a .yaml recipe)")
    return parse_yaml_mapping(p)


def parse_yaml_mapping(p: Path, what: str = "recipe") -> dict[str, Any]:
    """A YAML file that must be a mapping (a recipe, or a run folder's recipe.yaml). Malformed YAML, non-UTF-8 text
    and a key written twice (YAML keeps the last one silently) are errors naming the file and line."""
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PeftkitError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start}); save the {what} as UTF-8") from None
    try:
        check_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader), p)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PeftkitError(f"{p}:{where}: malformed YAML: {problem}") from None
    if raw is None:
        raise PeftkitError(f"{p}: the recipe is empty; it needs at least model.name_or_path and data")
    if not isinstance(raw, dict):
        raise PeftkitError(f"{p}: a recipe must be a mapping of sections (model:, data:, ...), "
                           f"got {type(raw).__name__}")
    return raw


def check_duplicate_keys(node, path: Path, prefix: str = "") -> None:
    """YAML reads `learning_rate:` written twice in one section as the LAST value, silently: refuse it."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key != "<<":
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise PeftkitError(f"{path}: key '{prefix}{key}' appears twice (lines {seen[key]} and {line}); "
                                       "YAML would silently keep the last one. Keep one of them")
                seen[key] = line
            check_duplicate_keys(value_node, path, f"{prefix}{key}." if key is not None else prefix)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            check_duplicate_keys(item, path, prefix)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """``section.key=value`` with the value parsed as YAML (``train.learning_rate=1e-4``)."""
    if "=" not in item:
        raise PeftkitError(f"override {item!r}: expected section.key=value, e.g. train.learning_rate=1e-4")
    dotted, _, value_text = item.partition("=")
    keys = dotted.strip().split(".")
    if not all(keys):
        raise PeftkitError(f"override {item!r}: empty key in {dotted!r}")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else None
    except yaml.YAMLError:
        value = value_text
    set_dotted(raw, keys, value, f"override {item!r}")


def set_dotted(raw: dict[str, Any], keys: list[str], value: Any, where: str) -> None:
    """raw[keys[0]][keys[1]]... = value, creating sections on the way (an override, a sweep's parameter)."""
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise PeftkitError(f"{where}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def recipe_from_dict(raw: dict[str, Any], where: str = "<recipe>") -> Recipe:
    reject_unknown(raw, TOP_LEVEL, where, "")
    kwargs: dict[str, Any] = {}
    for name in ("task", "output_dir", "overwrite_output_dir", "keep_checkpoints"):
        if name in raw:
            kwargs[name] = coerce(raw[name], Recipe.__dataclass_fields__[name].type, f"{name}", where)
    for name, cls in SECTIONS.items():
        section = raw.get(name) or {}
        if not isinstance(section, dict):
            raise PeftkitError(f"{where}: '{name}' must be a section (key: value lines), got {section!r}")
        kwargs[name] = build_section(cls, section, name, where)
    kwargs["tasks"] = build_tasks(raw.get("tasks"), raw.get("data") or {}, where)
    train = raw.get("train") or {}
    if not isinstance(train, dict):
        raise PeftkitError(f"{where}: 'train' must be a section of TrainingArguments keys, got {train!r}")
    kwargs["train"] = build_train(train, where, kwargs.get("task", "classification"))
    if kwargs.get("task") in SFT_CONFIG_TASKS and "packing" not in train:
        kwargs["train"]["packing"] = kwargs["model"].attn_implementation in EXACT_PACKING_ATTENTION
    apply_selection_settings(kwargs["train"], train, kwargs["selection"], kwargs.get("task", "classification"))
    return Recipe(**kwargs)


def build_tasks(raw: Any, shared_data: dict[str, Any], where: str) -> list[SubTask]:
    """A multitask recipe's ``tasks`` list: each {name, data}, its data written over the top-level data section."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise PeftkitError(f"{where}: 'tasks' must be a list of tasks, each with 'name' and 'data' "
                           "(e.g. - {{name: sst2, data: {{train_file: ...}}}})")
    tasks = []
    for i, item in enumerate(raw):
        reject_unknown(item, ("name", "data"), where, f"tasks[{i}].")
        name = item.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise PeftkitError(f"{where}: 'tasks[{i}].name' must be a short name of letters, digits, '-', '_' or "
                               f"'.' (it names the task's folder in the run), got {name!r}")
        data = item.get("data") or {}
        if not isinstance(data, dict):
            raise PeftkitError(f"{where}: 'tasks[{i}].data' must be a data section (key: value lines)")
        tasks.append(SubTask(name=name, data=build_section(DataSection, {**shared_data, **data},
                                                           f"tasks[{i}].data", where)))
    return tasks


def selection_metric(selection, task: str) -> str:
    """The metric that selects checkpoints and trials: selection.metric, else macro_f1 (loss for sft)."""
    return selection.metric or ("loss" if task == "sft" else "macro_f1")


def apply_selection_settings(values: dict[str, Any], raw_train: dict[str, Any], selection, task: str) -> None:
    """With a validation split (selection.validation_fraction or _rows): evaluate on it during training, checkpoint at
    each evaluation, keep the best by the selection metric. Keys the recipe's train section sets win."""
    if not selection.enabled:
        return
    metric = selection_metric(selection, task)
    every = 1.0 / max(selection.evaluations, 1)  # < 1 (checks want >= 2): a ratio of the training steps
    strategy = raw_train.get("eval_strategy", "steps")
    fill = {"eval_strategy": strategy, "save_strategy": strategy,
            "load_best_model_at_end": True, "metric_for_best_model": metric, "greater_is_better": metric != "loss"}
    if strategy == "steps":
        fill |= {"eval_steps": every, "save_steps": every}
    for key, value in fill.items():
        if key not in raw_train:
            values[key] = value


def reject_unknown(raw: dict[str, Any], known: typing.Iterable[str], where: str, prefix: str,
                   list_known: bool = True) -> None:
    """An unknown key is an error with a "did you mean"; the known keys are listed only where they are few (the
    train section has some 150, those of transformers.TrainingArguments / trl.SFTConfig)."""
    known = list(known)
    for key in raw:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            listed = (f"known keys: {', '.join(known)}" if list_known else
                      "the train section takes the fields of transformers.TrainingArguments (trl.SFTConfig for "
                      "causal-LM tasks)")
            suggestion = f"; did you mean '{prefix}{hint[0]}'?" if hint else f"; {listed}"
            raise PeftkitError(f"{where}: unknown key '{prefix}{key}'{suggestion}")


def build_section(cls: type, raw: dict[str, Any], name: str, where: str):
    hints = typing.get_type_hints(cls)
    reject_unknown(raw, hints, where, f"{name}.")
    values = {key: coerce(value, hints[key], f"{name}.{key}", where) for key, value in raw.items()}
    return cls(**values)


def build_train(raw: dict[str, Any], where: str, task: str = "classification") -> dict[str, Any]:
    """Check train keys against the task's trainer config (TrainingArguments, or trl.SFTConfig for causal-LM
    tasks) and fill peftkit's defaults."""
    causal = task in SFT_CONFIG_TASKS
    reserved = {**TRAIN_RESERVED, **(SFT_TRAIN_RESERVED if causal else {})}
    fields = training_argument_fields(task)
    for key in raw:
        if key in reserved:
            raise PeftkitError(f"{where}: 'train.{key}' is set by peftkit; {reserved[key]}")
        near_reserved = difflib.get_close_matches(str(key), list(reserved), n=1)
        if key not in fields and near_reserved:  # max_seq_length -> max_length: say where it lives in one step
            raise PeftkitError(f"{where}: unknown key 'train.{key}'; {reserved[near_reserved[0]]}")
    if not causal:
        causal_only = set(training_argument_fields("sft")) - set(fields)
        for key in raw:
            if key in SFT_TRAIN_RESERVED:
                raise PeftkitError(f"{where}: 'train.{key}' is set by peftkit; {SFT_TRAIN_RESERVED[key]}")
            if key in causal_only:
                raise PeftkitError(f"{where}: unknown key 'train.{key}': it is a key of task sft and "
                                   f"generative_classification (trl.SFTConfig), not of task {task}; remove it, or "
                                   "set task: sft")
    reject_unknown(raw, fields, where, "train.", list_known=False)
    values = {**TRAIN_DEFAULTS, **(SFT_TRAIN_DEFAULTS if causal else {})}
    if causal and "gradient_checkpointing" not in raw and "activation_checkpointing" not in raw:
        values["activation_checkpointing"] = False
    for key, value in raw.items():
        values[key] = coerce(value, fields[key], f"train.{key}", where)
    return values



def training_argument_fields(task: str = "classification") -> dict[str, Any]:
    """Field name -> type of the task's trainer config: trl.SFTConfig for causal-LM tasks, else TrainingArguments.

    transformers and trl are imported here, not at module import.
    """
    if task in SFT_CONFIG_TASKS:
        from trl import SFTConfig as config_class
    else:
        from transformers import TrainingArguments as config_class

    return {f.name: f.type for f in dataclasses.fields(config_class) if f.init}




def coerce(value: Any, annotation: Any, key: str, where: str) -> Any:
    """Return value as the annotated type, or raise a PeftkitError naming the key.

    Lenient where YAML is surprising: ``2e-4`` (no dot) is a string in YAML 1.1, so numeric strings
    become floats; ints become floats. Everything else must already have the right type.
    """
    if isinstance(annotation, str):
        annotation = _resolve_string_annotation(annotation)
    ok, result = _try_coerce(value, annotation)
    if ok:
        return result
    raise PeftkitError(f"{where}: '{key}' must be {describe(annotation)}, got {value!r} ({type(value).__name__})")


def _try_coerce(value: Any, annotation: Any) -> tuple[bool, Any]:
    if annotation is Any:
        return True, value
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None:
            return type(None) in args, None
        # exact-type members first, so "2e-4" in str|float stays what the member order says
        for arg in sorted(args, key=lambda a: 0 if isinstance(a, type) and type(value) is a else 1):
            ok, result = _try_coerce(value, arg)
            if ok:
                return True, result
        return False, None
    if origin is Literal:
        return value in typing.get_args(annotation), value
    if origin in (list, tuple):
        if isinstance(value, str):
            return False, None
        if not isinstance(value, (list, tuple)):
            return False, None
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        items = [_try_coerce(v, item_type) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if origin is dict:
        return isinstance(value, dict), value
    if annotation is type(None):
        return value is None, None
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        if isinstance(value, bool):
            return False, None
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value.strip()):
            return True, float(value)
        return False, None
    if annotation is str:
        return isinstance(value, str), value
    if isinstance(annotation, type) and issubclass(annotation, str):  # str enums in TrainingArguments
        return isinstance(value, str), value
    if isinstance(annotation, type):
        return isinstance(value, annotation), value
    return True, value


def _resolve_string_annotation(text: str) -> Any:
    try:
        return eval(text, {**typing.__dict__, "Union": Union}, {})  # noqa: S307 - annotations of our own dataclasses
    except Exception:
        return Any


def describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(annotation))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (list, tuple):
        (item,) = typing.get_args(annotation)[:1] or (Any,)
        return f"a list of {describe(item)}"
    if annotation is type(None):
        return "null"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))
