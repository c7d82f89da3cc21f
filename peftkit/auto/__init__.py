"""`peftkit auto TRAIN --budget 30m`: a budgeted search over backbones, methods and hyperparameters.

``budget`` (the wall-clock ledger, the deadline callback, the final-evaluation reserve; clock injectable),
``arms`` (backbone x method, each with its `peftkit init` recipe and search space), ``search`` (the Optuna study
with successive halving, one trial as a normal run, a worker's loop), ``leaderboard`` (best_recipe.yaml and the
leaderboard), ``driver`` (the session, the workers and the end) and ``command`` (the parser).

Imports: `sweep` (storage, heartbeat, pruning report, trial recipes, worker processes), `init` and `run`.
"""
