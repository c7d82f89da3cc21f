"""Counts of the hostile-input suite by class: `python tests/helpers/hostile_counts.py [--counting]
[--slow]`.

Runs tests/unit/test_bad_input_fails_loudly.py (and, with --e2e, tests/e2e/test_terminal_output_and_signals.py) and
prints, for each class of the issue (silent wrong success, traceback, unclear, quiet), how many cases ended as: ok,
traceback, silent (exit 0 or went on where an error was due), unclear, damaged, noisy. --counting records a model load
where an error was due instead of stopping it (how the "before" counts were taken on the code before the fixes).
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> int:
    files = ["tests/unit/test_bad_input_fails_loudly.py"]
    if "--e2e" in argv:
        files.append("tests/e2e/test_terminal_output_and_signals.py")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.jsonl"
        env = {**os.environ, "HOSTILE_REPORT": str(report), "OMP_NUM_THREADS": "1"}
        if "--counting" in argv:
            env["HOSTILE_COUNTING"] = "1"
        marker = [] if "--slow" in argv else ["-m", "not slow"]
        subprocess.run([sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider", *marker],
                       cwd=REPO, env=env)
        rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    table = collections.Counter((r["category"], r["verdict"]) for r in rows)
    verdicts = sorted({v for _, v in table} | {"ok"})
    categories = sorted({c for c, _ in table})
    print(f"\n{'class':<12}" + "".join(f"{v:>11}" for v in verdicts) + f"{'total':>8}")
    for category in categories:
        counts = [table[(category, v)] for v in verdicts]
        print(f"{category:<12}" + "".join(f"{n:>11}" for n in counts) + f"{sum(counts):>8}")
    totals = [sum(table[(c, v)] for c in categories) for v in verdicts]
    print(f"{'all':<12}" + "".join(f"{n:>11}" for n in totals) + f"{sum(totals):>8}")
    if "--list" in argv:
        for r in sorted(rows, key=lambda r: (r["verdict"], r["case"])):
            if r["verdict"] != "ok":
                print(f"  {r['verdict']:<10} {r['case']}: {r['why'][:200]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
