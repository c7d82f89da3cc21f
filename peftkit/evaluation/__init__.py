"""Metrics of a classifier (and the folder `peftkit evaluate --data FILE` writes them to), evaluation of causal-LM
runs, and label words scored after prompts.

Imports: `core`, `recipe`, `runs`, `data`, `model`, `errors`.
"""
