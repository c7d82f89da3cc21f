"""`peftkit sweep`: the Optuna study and its search space (`study`), and the workers and outputs (`driver`).

Imports: `run` and everything below it.
"""
