"""The one-command path on data peftkit was never tuned for: `init` then `train`, and `auto --budget`.

Arms, per data set (SST-2 -> dev, AG News 10k -> test, CLINC150 in-scope -> test):
  a  the recipe `peftkit init` wrote before the training-plan rules (commit bd98241; give its checkout with
     --baseline-src), trained unedited
  b  the recipe today's `peftkit init` writes, trained unedited
  c  `peftkit auto TRAIN --eval EVAL --budget 30m`
Each arm runs as its own process (`python -m peftkit ...`, OMP_NUM_THREADS=1), its wall time and peak RSS
measured from outside; results go to OUT/results.json as soon as an arm finishes, so a killed benchmark resumes
arm by arm (an arm with a result is skipped). The table is printed and written to OUT/results.md.

    python -m benchmarks.quality.bench_auto --out bench-auto --sets clinc150 agnews sst2 --arms b c
    python -m benchmarks.quality.bench_auto --out bench-auto --arms a --baseline-src /path/to/peftkit-bd98241

Nothing here chooses anything on the test files: each arm reads its eval file once, at its end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.lib.common import REPO
from benchmarks.lib.common import SHARED_DATA as SHARED

SETS = {
    "sst2": ("sst2/train.tsv", "sst2/dev.tsv"),
    "agnews": ("agnews/train_subset10k.tsv", "agnews/test.tsv"),
    "clinc150": ("clinc150/train.tsv", "clinc150/test.tsv"),
}
PUBLISHED = {"sst2": "0.935 (BERT-base, 67k rows)", "agnews": "0.941 (BERT-base, 120k rows)",
             "clinc150": "~0.96 (BERT-base, Larson et al. 2019)"}


def run_measured(cmd: list[str], cwd: Path, src: Path, log: Path) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS in GiB of the largest child) of one command run to its end."""
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    started = time.time()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the benchmark's running maximum
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.time() - started, usage.ru_maxrss / 2**20


def metrics_of(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: metrics.get(k) for k in ("accuracy", "macro_f1")} | {
        "validation": (metrics.get("selection") or {}).get("best_metric")}


def arm_init(name: str, arm: str, out: Path, src: Path) -> dict:
    train, eval_ = (str(SHARED / p) for p in SETS[name])
    where = out / name / arm
    where.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m", "peftkit"]
    code, _, _ = run_measured([*py, "init", train, "--eval", eval_, "--out", "recipe.yaml", "--force",
                               "--output-dir", "run"], where, src, where / "init.log")
    if code:
        raise SystemExit(f"{name}/{arm}: init failed, see {where / 'init.log'}")
    code, wall, peak = run_measured([*py, "train", "recipe.yaml"], where, src, where / "train.log")
    if code:
        raise SystemExit(f"{name}/{arm}: train failed, see {where / 'train.log'}")
    return metrics_of(where / "run") | {"wall_s": round(wall), "peak_gib": round(peak, 2),
                                         "command": f"peftkit init {train} --eval {eval_} && peftkit train"}


def arm_auto(name: str, out: Path, budget: str) -> dict:
    train, eval_ = (str(SHARED / p) for p in SETS[name])
    where = out / name / "c"
    where.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "peftkit", "auto", train, "--eval", eval_, "--budget", budget, "--out", "auto"]
    code, wall, peak = run_measured(cmd, where, REPO, where / "auto.log")
    if code:
        raise SystemExit(f"{name}/c: auto failed, see {where / 'auto.log'}")
    summary = json.loads((where / "auto" / "auto_summary.json").read_text())
    final = summary.get("final_evaluation") or {}
    return {"accuracy": final.get("accuracy"), "macro_f1": final.get("macro_f1"),
            "validation": summary.get("best_validation"), "wall_s": round(wall), "peak_gib": round(peak, 2),
            "budget": budget, "trials": summary["trials"], "pruned": summary["pruned"],
            "command": " ".join(["peftkit", *cmd[3:]])}


def table(results: dict) -> str:
    lines = ["| set | arm | test accuracy | macro F1 | validation macro F1 | wall | peak RSS | published |",
             "|---|---|---|---|---|---|---|---|"]
    for name in SETS:
        for arm, r in sorted(results.get(name, {}).items()):
            fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
            lines.append(f"| {name} | {arm} | {fmt(r.get('accuracy'))} | {fmt(r.get('macro_f1'))} | "
                         f"{fmt(r.get('validation'))} | {r['wall_s'] // 60} min {r['wall_s'] % 60:02d} s | "
                         f"{r['peak_gib']:.2f} GiB | {PUBLISHED[name]} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench-auto")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--arms", nargs="+", default=["b", "c"], choices=["a", "b", "c"])
    parser.add_argument("--baseline-src", help="a checkout of commit bd98241, for arm a")
    parser.add_argument("--budget", default="30m")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in args.sets:
        for arm in args.arms:
            if arm in results.get(name, {}):
                continue  # resumable: this arm has its result
            if arm == "a" and not args.baseline_src:
                raise SystemExit("arm a needs --baseline-src (a checkout of commit bd98241)")
            result = (arm_auto(name, out, args.budget) if arm == "c" else
                      arm_init(name, arm, out, Path(args.baseline_src) if arm == "a" else REPO))
            results.setdefault(name, {})[arm] = result
            path.write_text(json.dumps(results, indent=2))
            print(f"{name} {arm}: {result}", flush=True)
    (out / "results.md").write_text(table(results) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
