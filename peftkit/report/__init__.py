"""`RUN/report.html` and `peftkit report`: a run's evaluation as one self-contained HTML file that opens offline
(`single`), a comparison of several runs (`compare`), the shared page pieces (`page`: tables, embedded PNGs, the
few lines of sorting script) and the command (`command`).

Train and evaluate write a classification run's report, so this sits below `tasks/`.
Imports: `core`, `runs`, `evaluation`, `errors`.
"""
