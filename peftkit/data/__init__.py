"""Rows to examples: file readers (`files`), labelled text for classification heads (`classification`),
prompts and completions for causal LMs (`causal`, `causal_encode`), and the mixing of several tasks.

Imports: `core`, `recipe`, `errors`.
"""
