"""Rebuild the SST-2 files bundled with peftkit (the built-in quickstart's data) from the GLUE SST-2 files.

    python peftkit/defaults/data/make_sst2_subset.py ../shared/data/sst2   # writes peftkit/defaults/data/sst2/

train_4k.tsv: 4,000 rows of GLUE SST-2 train.tsv (67,349 rows), the header kept, drawn with the same seeded rule
peftkit applies for `data.max_train_samples: 4000` with seed 42 (data.subsample: random.Random(42).sample over
the usable rows, kept in file order). The quickstart used exactly that subset when it read the full file, so
training on the bundled file is the same run as before. dev.tsv: the full GLUE SST-2 dev set (872 rows), copied
byte for byte. Lines are copied as they are in the source (no re-quoting). Standard library only.
"""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

TRAIN_ROWS = 4000
SEED = 42


def usable(line: str) -> bool:
    """A row peftkit would use: two tab-separated fields, non-empty text, label 0 or 1."""
    fields = line.rstrip("\n").split("\t")
    return len(fields) == 2 and bool(fields[0].strip()) and fields[1].strip() in ("0", "1")


def subset_lines(train_tsv: Path, rows: int = TRAIN_ROWS, seed: int = SEED) -> list[str]:
    """The header and the chosen rows, as lines of the source file (newline included)."""
    lines = train_tsv.read_text(encoding="utf-8").splitlines(keepends=True)
    header, body = lines[0], [line for line in lines[1:] if line.strip()]
    bad = [i for i, line in enumerate(body, start=2) if not usable(line)]
    if bad:
        raise SystemExit(f"{train_tsv}: {len(bad)} rows peftkit would skip (first: line {bad[0]}); "
                         "the subset rule assumes none")
    chosen = sorted(random.Random(seed).sample(range(len(body)), rows))
    return [header] + [body[i] if body[i].endswith("\n") else body[i] + "\n" for i in chosen]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    source = Path(argv[0])
    out = Path(__file__).resolve().parent / "sst2"
    out.mkdir(exist_ok=True)
    (out / "train_4k.tsv").write_text("".join(subset_lines(source / "train.tsv")), encoding="utf-8")
    shutil.copyfile(source / "dev.tsv", out / "dev.tsv")
    print(f"wrote {out / 'train_4k.tsv'} ({TRAIN_ROWS} rows) and {out / 'dev.tsv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
