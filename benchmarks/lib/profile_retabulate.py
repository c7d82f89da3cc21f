"""Re-deriving a finished profile's window tokens (``python -m benchmarks.speed.profile_step --retabulate NAME``).

The first version of profile_step.py took the profiled window's batches one batch late (accelerate's data loader
collates one batch ahead of the step that trains it) and did not store the batches. The batch order is seeded, so
the configs' first batches are collated again here, through the Trainer's own data loader, without training or
timing anything, and the figures per token are recomputed from the run's own times.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any


class _Collated(Exception):
    """Stops peftkit's run once the batches to replay are collated (nothing trained, nothing timed)."""


def replay_batches(spec: dict[str, Any]) -> dict[str, Any]:
    """(useful tokens, padded positions) of the first ``spec['batches']`` training batches of a config, collated
    through the Trainer's own data loader without training: the batch order is seeded, so these are the batches a
    profiled run trained. Used by --retabulate to re-derive a finished run's window tokens."""
    import peftkit.run as run_mod
    from benchmarks.lib.worker import CountingCollator, peftkit_recipe
    from peftkit.tasks import task_for

    recipe = peftkit_recipe(spec)
    module = task_for(recipe.task)
    build, found = module.build_trainer, {}

    def build_and_collate(*args, **kwargs):
        trainer = build(*args, **kwargs)
        collator = CountingCollator(trainer.data_collator)
        trainer.data_collator = collator
        for _, _batch in zip(range(spec["batches"]), trainer.get_train_dataloader()):
            pass
        found["per_batch"] = collator.per_batch[:spec["batches"]]
        raise _Collated

    module.build_trainer = build_and_collate
    try:
        run_mod.run(recipe)
    except _Collated:
        pass
    return found


def retabulate(name: str, run_child: Callable[..., dict[str, Any]]) -> None:
    """Re-derive the window's tokens of a results file written before the window's batches were stored (the first
    version took them one batch late), from the replayed batch order, and rewrite its tables. Nothing is re-timed:
    the window's wall time, the unprofiled time per token and every operator figure are the run's own.

    ``run_child`` is the profiling script's launcher of one child process (passed in, so that this module does not
    import the script that imports it)."""
    from benchmarks.lib.common import RESULTS, write_results
    from benchmarks.lib.profile_categories import CATEGORIES
    from benchmarks.lib.profile_report import markdown
    from benchmarks.lib.profile_runs import config_spec, window_tokens

    payload = json.loads((RESULTS / f"{name}.json").read_text())
    for run in payload["runs"]:
        if "per_batch_useful_positions" in run:
            continue
        warm, steps = run["warmup_steps"], run["profiled_steps"]
        spec = dict(config_spec(run["config"], warm, steps, 0), batches=warm + steps)
        batches = run_child(spec, RESULTS / "logs", "--replay")["per_batch"]
        run.update(window_tokens(batches, warm, steps, run["window_wall_s"], run["unprofiled_s_per_token"],
                                 run["model_gflop_per_token"] * 1e9))
        run["per_batch_useful_positions"] = batches
        run["tokens_rederived"] = ("window tokens re-derived by --retabulate from the replayed batch order; "
                                   "check: the profiled matmuls' row counts are the window batches' positions")
        print(run["config"], "replayed batches (useful, positions):", batches, flush=True)
    payload["retabulated"] = time.strftime("%Y-%m-%d %H:%M")
    write_results(name, payload, markdown(payload, CATEGORIES))
