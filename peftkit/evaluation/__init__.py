"""Metrics of a classifier, evaluation of causal-LM runs, and label words scored after prompts.

Imports: `core`, `recipe`, `runs`, `data`, `model`, `errors`.
"""
