"""The base model and what is attached to it: loading (hub, local, packaged), 4/8-bit quantization, the
checks of a recipe against a model's config, the LoRA adapter, and starting from another run's adapter.

Imports: `core`, `recipe`, `runs`, `data`, `errors`.
"""
