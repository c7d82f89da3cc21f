"""`peftkit validate`: every check that does not need a model, including reading the data."""

from __future__ import annotations

from peftkit.data import format_report, load_classification_data
from peftkit.model import resolve_model_source
from peftkit.model_check import check_recipe_against_model, checkable_folder
from peftkit.recipe import CAUSAL_TASKS, Recipe
from peftkit.transfer import check_init_from


def check_recipe_inputs(recipe: Recipe) -> str:
    """Raise PeftkitError on the first problem; return a short summary when all is well."""
    source = resolve_model_source(recipe.model)
    if recipe.task == "multitask":  # each task audited as its own generative_classification recipe
        from peftkit.tasks.multitask import sub_recipe

        data_report, labels = "\n".join(f"task {t.name}: {audit_causal_data(sub_recipe(recipe, i))}"
                                         for i, t in enumerate(recipe.tasks)), None
    elif recipe.task in CAUSAL_TASKS:
        data_report, labels = audit_causal_data(recipe), None
    else:
        data = load_classification_data(recipe.data, recipe.seed)
        data_report, labels = format_report(data), len(data.label_names)
        if recipe.task == "distillation":
            data_report += "\n" + check_distillation_inputs(recipe, data.label_names)
    # the model built from its config on the meta device: target modules, positions, weights vs config
    check_recipe_against_model(recipe, checkable_folder(recipe), labels)
    check_init_from(recipe)
    quant = ("4-bit " + recipe.quantization.bnb_4bit_quant_type if recipe.quantization.load_in_4bit
             else "8-bit" if recipe.quantization.load_in_8bit else "none")
    return "\n".join([
        f"recipe OK: {recipe.source}",
        f"task: {recipe.task}; model: {source}; quantization: {quant}; "
        f"adapter: {'DoRA' if recipe.adapter.use_dora else 'LoRA'} r={recipe.adapter.r}",
        data_report,
        f"output_dir: {recipe.output_dir}",
    ])


def check_distillation_inputs(recipe: Recipe, label_names: list[str]) -> str:
    """The teacher run folder (a classification run with these labels) and the unlabelled file's text column."""
    from peftkit.tasks.distillation import read_unlabelled
    from peftkit.teacher import open_teacher

    teacher_dir, teacher_recipe, _ = open_teacher(recipe.distill.teacher, label_names, "distill.teacher")
    unlabelled = read_unlabelled(recipe)
    return (f"teacher: {teacher_dir} ({teacher_recipe.task}); unlabelled: {len(unlabelled)} rows"
            + (f" from {recipe.distill.unlabelled_file}" if unlabelled else ""))


def audit_causal_data(recipe: Recipe) -> str:
    """Causal-LM data read and tokenized as training will (the tokenizer, not the model): what truncation drops."""
    from peftkit.model import load_tokenizer
    from peftkit.sft_data import format_causal_report, load_causal_data
    from peftkit.sft_encode import prepare_examples, truncation_length

    causal = load_causal_data(recipe.data, recipe.task, recipe.seed)
    tokenizer = load_tokenizer(recipe.model)
    prepare_examples(recipe, tokenizer, causal)
    report = format_causal_report(causal, truncation_length(recipe))
    if causal.label_words:
        report += "\n" + label_word_tokens(tokenizer, causal.label_names, causal.label_words)
    return report


def label_word_tokens(tokenizer, label_names: list[str], label_words: list[str]) -> str:
    """How many tokens each label word is (label scoring sums their log-probabilities: see peftkit/generative.py)."""
    counts = [len(tokenizer(word, add_special_tokens=False)["input_ids"]) for word in label_words]
    line = "label word tokens: " + ", ".join(f"{name} {word!r} {n}" for name, word, n in
                                             zip(label_names, label_words, counts))
    if len(set(counts)) > 1:
        line += (" (lengths differ: evaluate.label_score says how they are made comparable: sum, mean or "
                 "calibrated; see recipes/README.md)")
    return line
