"""The run folder: `layout` names every file in it, `folder` opens, locks, replaces and finishes it, `read`
is the one reader of a finished run, `checkpoints` says which checkpoints are complete.

Imports: `core`, `recipe`, `errors`.
"""
