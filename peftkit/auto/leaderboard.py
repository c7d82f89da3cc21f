"""What `peftkit auto` leaves in its folder: ``best_recipe.yaml`` and the leaderboard (``leaderboard.md``,
``leaderboard.csv``, and ``leaderboard.png``: validation metric against elapsed budget, one series per arm)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from peftkit.auto.budget import format_duration
from peftkit.core.atomic import write_json_atomic, write_text_atomic

BEST_RECIPE = "best_recipe.yaml"
SUMMARY = "auto_summary.json"


def trial_params(arm, trial) -> dict[str, Any]:
    """The winner's recipe overrides: the searched keys, and lora_alpha as the trial had it."""
    params = {k: v for k, v in trial.params.items() if k != "arm"}
    params["adapter.lora_alpha"] = round(params["adapter.r"] * arm.alpha_per_rank, 4)
    return params


def write_best_recipe(search, arm, winner, options) -> Path:
    import yaml

    from peftkit.auto.search import trial_value

    params = trial_params(arm, winner)
    raw = arm.sweep.trial_raw(params, "best", final=True)
    if options.eval_file:  # retraining evaluates on the eval file (the trials named it but never read it)
        raw["data"]["eval_file"] = options.eval_file
        raw["data"].pop("eval_fraction", None)
        raw.setdefault("evaluate", {})["enabled"] = True
    path = options.out_dir() / BEST_RECIPE
    header = (f"# peftkit train {path}\n"
              f"# The best of `peftkit auto` ({options.train_file}, budget {options.budget}): trial {winner.number}, "
              f"{arm.name} ({arm.model}), validation {search.metric} {trial_value(winner):.4f}\n"
              f"# (validation split carved from the training rows; the eval file was not used to choose).\n"
              f"# Its trained run folder: {winner.user_attrs['run_dir']}. Base recipe: {arm.recipe_path}.\n"
              f"# Chosen: {json.dumps(params)}\n")
    write_text_atomic(path, header + yaml.safe_dump(raw, sort_keys=False))
    return path


def leaderboard_rows(search) -> list[dict[str, Any]]:
    from peftkit.auto.search import trial_value

    rows = []
    for t in search.study.get_trials(deepcopy=False):
        params = t.params or t.system_attrs.get("fixed_params", {})  # a queued trial has only its fixed params
        arm = search.arms.get(params.get("arm"))
        value = trial_value(t)
        pruned_at = t.user_attrs.get("pruned_at_step")
        rows.append({
            "trial": t.number, "arm": params.get("arm"), "model": arm.model if arm else None,
            "method": arm.method if arm else None, "state": t.state.name.lower(),
            "init_recipe": bool(t.user_attrs.get("recipe_as_written")),
            f"validation_{search.metric}": None if value is None else round(value, 4),
            "learning_rate": t.user_attrs.get("learning_rate", params.get("train.learning_rate")),
            "r": params.get("adapter.r"), "epochs": params.get("train.num_train_epochs"),
            "batch_size": params.get("train.per_device_train_batch_size"),
            "pruned_at_epoch": None if pruned_at is None else pruned_at / 100,
            "stopped_at_deadline": "stopped_at_deadline" in t.user_attrs,
            "seconds": t.user_attrs.get("seconds"), "elapsed_s": t.user_attrs.get("elapsed_s"),
            "retry_of": t.system_attrs.get("failed_trial", t.user_attrs.get("retry_of")),
            "run_dir": t.user_attrs.get("run_dir"),
        })
    return rows


def write_leaderboard(search, winner, final: dict[str, Any] | None, budget) -> None:
    out = search.out
    rows = leaderboard_rows(search)
    key = f"validation_{search.metric}"
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    write_text_atomic(out / "leaderboard.csv", buffer.getvalue())
    write_text_atomic(out / "leaderboard.md", markdown(search, rows, key, winner, final, budget))
    plot(rows, key, budget.total_s, out / "leaderboard.png", maximize(search))
    write_json_atomic(out / SUMMARY, summary(search, rows, key, winner, final, budget))


def summary(search, rows, key: str, winner, final: dict[str, Any] | None, budget) -> dict[str, Any]:
    """The search in one JSON file, for scripts (benchmarks/bench_auto.py reads it)."""
    from peftkit.auto.search import trial_value

    states = [r.get("state") for r in rows]
    return {
        "budget_s": budget.total_s, "spent_s": round(budget.spent(), 1), "trials": len(rows),
        "complete": states.count("complete"), "pruned": states.count("pruned"), "metric": search.metric,
        "winner_trial": winner.number if winner is not None else None,
        "winner_run_dir": winner.user_attrs.get("run_dir") if winner is not None else None,
        "best_validation": trial_value(winner) if winner is not None else None,
        "final_evaluation": final,
    }


def markdown(search, rows, key, winner, final, budget) -> str:
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail")}
    lines = [f"# peftkit auto: {search.out}", "",
             f"{len(rows)} trials ({counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed) "
             f"in {format_duration(budget.spent())} of a {format_duration(budget.total_s)} budget; ranked by "
             f"{key.replace('_', ' ', 1)} on a split of the training rows (the eval file chose nothing).", ""]
    if winner is not None:
        lines += [f"Winner: trial {winner.number} ({winner.params['arm']}), run folder "
                  f"`{winner.user_attrs['run_dir']}` (also `{search.out / 'winner'}`); recipe "
                  f"`{search.out / BEST_RECIPE}`."]
        if final:
            lines += [f"Evaluated once on {final['data']}: "
                      + ", ".join(f"{k} {final[k]:.4f}" for k in ("accuracy", "macro_f1") if k in final) + "."]
        lines.append("")
    columns = [c for c in (rows[0] if rows else {}) if c not in ("run_dir", "model", "method")]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    sign = -1 if maximize(search) else 1
    ranked = sorted(rows, key=lambda r: (r[key] is None, sign * (r[key] or 0), r["trial"]))
    for r in ranked:
        lines.append("| " + " | ".join("" if r[c] is None else f"{r[c]:.2e}" if c == "learning_rate" else str(r[c])
                                       for c in columns) + " |")
    return "\n".join(lines) + "\n"


def maximize(search) -> bool:
    return search.study.direction.name == "MAXIMIZE"


def plot(rows: list[dict[str, Any]], key: str, budget_s: float, path: Path, bigger_is_better: bool = True) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm in sorted({r["arm"] for r in rows if r["arm"]}):
        points = sorted((r["elapsed_s"] / 60, r[key], r["state"]) for r in rows
                        if r["arm"] == arm and r[key] is not None and r["elapsed_s"] is not None)
        if not points:
            continue
        line, = ax.plot([p[0] for p in points], [p[1] for p in points], "-", alpha=0.4, label=arm)
        for state, marker in (("complete", "o"), ("pruned", "x")):
            chosen = [p for p in points if p[2] == state]
            if chosen:
                ax.scatter([p[0] for p in chosen], [p[1] for p in chosen], marker=marker, color=line.get_color())
    best = best_so_far(rows, key, bigger_is_better)
    if best:
        ax.step([p[0] for p in best], [p[1] for p in best], where="post", color="black", linewidth=1,
                label="best complete so far")
    ax.axvline(budget_s / 60, color="grey", linestyle="--", label="budget")
    ax.set_xlabel("elapsed budget (minutes)")
    ax.set_ylabel(key.replace("_", " ", 1))
    ax.set_title("peftkit auto: o complete, x pruned")
    ax.legend(fontsize="small")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def best_so_far(rows: list[dict[str, Any]], key: str, bigger_is_better: bool = True) -> list[tuple[float, float]]:
    """(minutes, best complete validation value up to then): the curve the budget buys."""
    done = sorted((r["elapsed_s"] / 60, r[key]) for r in rows
                  if r["state"] == "complete" and r[key] is not None and r["elapsed_s"] is not None)
    out: list[tuple[float, float]] = []
    for minutes, value in done:
        better = max if bigger_is_better else min
        out.append((minutes, value if not out else better(out[-1][1], value)))
    return out
