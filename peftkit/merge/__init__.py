"""`peftkit merge` (an adapter into its base, `into_base`, verified by `check`) and `peftkit merge-adapters`
(several adapters into one, `adapters`).

Imports: `tasks/` and everything below it.
"""
