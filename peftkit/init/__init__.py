"""`peftkit init DATA_FILE`: reads a labelled file (`detect`) and writes a commented recipe for it
(`recipe_writer`).

Imports: anything below `tasks/`.
"""
