"""`peftkit augment RECIPE`: seeded edits of the training sentences (`rows`) and paraphrases by a model
(`paraphrase`), filtered by a teacher.

Imports: `tasks/` and everything below it.
"""
