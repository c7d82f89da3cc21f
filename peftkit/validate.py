"""`peftkit validate`: every check that does not need a model, including reading the data."""

from __future__ import annotations

from peftkit.data import format_report, load_classification_data
from peftkit.model import resolve_model_source
from peftkit.recipe import Recipe


def check_recipe_inputs(recipe: Recipe) -> str:
    """Raise PeftkitError on the first problem; return a short summary when all is well."""
    source = resolve_model_source(recipe.model)
    data = load_classification_data(recipe.data, recipe.seed)
    quant = ("4-bit " + recipe.quantization.bnb_4bit_quant_type if recipe.quantization.load_in_4bit
             else "8-bit" if recipe.quantization.load_in_8bit else "none")
    return "\n".join([
        f"recipe OK: {recipe.source}",
        f"task: {recipe.task}; model: {source}; quantization: {quant}; "
        f"adapter: {'DoRA' if recipe.adapter.use_dora else 'LoRA'} r={recipe.adapter.r}",
        format_report(data),
        f"output_dir: {recipe.output_dir}",
    ])
