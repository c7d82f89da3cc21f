"""`peftkit report RUN [RUN ...] [--out FILE]`: one run's report.html (re)written from its files, or a comparison
of several runs."""

from __future__ import annotations

from pathlib import Path

from peftkit.errors import PeftkitError

DEFAULT_COMPARISON = "comparison.html"


def add_parser(sub) -> None:
    report = sub.add_parser(
        "report", help="a run's report.html (offline HTML), or a comparison of several runs",
        description="With one RUN_DIR: write RUN_DIR/report.html again from the run's files (headline metrics, "
                    "sortable per-class table, confusion heatmap, misclassified texts by confusion pair, training "
                    "curves, reliability diagram, data report). With several: one page comparing them, the first "
                    "as the baseline (per-class F1 with differences, texts one run gets right and the other "
                    "wrong). The files are self-contained and open offline.")
    report.add_argument("runs", metavar="RUN_DIR", nargs="+",
                        help="classification run folders (or a `peftkit evaluate --data` folder inside one)")
    report.add_argument("--out", metavar="FILE",
                        help=f"where to write (default: RUN_DIR/report.html for one run, ./{DEFAULT_COMPARISON} "
                             "for several)")
    report.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from peftkit.evaluation.run_report import run_report_html, write_run_report
    from peftkit.report.compare import write_comparison

    for run in args.runs:
        if not Path(run).is_dir():
            raise PeftkitError(f"{run}: no such run folder")
    if len(args.runs) == 1 and args.out is None:
        path = write_run_report(args.runs[0])
    elif len(args.runs) == 1:
        from peftkit.core.atomic import write_text_atomic

        path = Path(args.out)
        write_text_atomic(path, run_report_html(Path(args.runs[0])))
    else:
        path = write_comparison(args.runs, args.out or DEFAULT_COMPARISON)
    print(f"written to {path}")
    return 0
