"""Data: read train/eval splits, map labels to ids, count and report bad rows, tokenize.

Everything here runs before a model is loaded, so a wrong column or label stops the run in seconds.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from peftkit.errors import PeftkitError
from peftkit.recipe import DataSection
from peftkit.recipe.sections import CLASSIFICATION_FORMAT

LOCAL_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
BUILTIN_PREFIX = "builtin:"


# ---------------------------------------------------------------------------------------------
# Reading rows
# ---------------------------------------------------------------------------------------------


def builtin_data_dir() -> Path:
    from importlib.resources import files

    return Path(str(files("peftkit") / "defaults" / "data"))


def resolve_data_path(path: str | Path) -> Path:
    """A data file path as written in a recipe: ``builtin:NAME`` (shipped with peftkit) or a path relative to the
    folder peftkit runs from."""
    text = str(path)
    if not text.startswith(BUILTIN_PREFIX):
        return Path(text)
    name = text[len(BUILTIN_PREFIX):].lstrip("/")
    root = builtin_data_dir()
    resolved = root / name
    if not name or ".." in Path(name).parts or not resolved.is_file():
        shipped = sorted(str(p.relative_to(root)) for p in root.rglob("*.tsv"))
        raise PeftkitError(f"{text}: no such data file shipped with peftkit; built-in files are "
                           f"{', '.join(BUILTIN_PREFIX + n for n in shipped)}")
    return resolved


def read_table(path: str | Path, data: DataSection) -> list[dict[str, Any]]:
    """Rows of a local csv/tsv/jsonl/parquet file as dicts. Raises PeftkitError naming the file."""
    path = resolve_data_path(path)
    kind = LOCAL_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise PeftkitError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(LOCAL_FORMATS)}")
    if path.is_dir():
        raise PeftkitError(f"{path} is a folder, not a data file; give the {kind} file inside it")
    if not path.is_file():
        raise PeftkitError(f"data file not found: {path} (check the path in the recipe's data section; "
                           "relative paths are relative to the folder you run peftkit from)")
    if path.stat().st_size == 0:
        raise PeftkitError(f"{path}: the file is empty")
    try:
        rows = _READERS[kind](path, data)
    except UnicodeDecodeError as e:
        raise PeftkitError(f"{path}: {describe_decode_error(path, e)}; re-save it as UTF-8 "
                           "(e.g. iconv -f latin1 -t utf-8 IN > OUT, or 'CSV UTF-8' in a spreadsheet)") from None
    except (ValueError, csv.Error, OSError) as e:
        raise PeftkitError(f"{path}: cannot be read as {kind}: {str(e).splitlines()[0]}") from None
    if not rows:
        raise PeftkitError(f"{path}: no data rows (only a header?)")
    return rows


def describe_decode_error(path: Path, error: UnicodeDecodeError) -> str:
    """Where the first non-UTF-8 bytes are, as a line (and column) of the file, not only a byte offset: the
    decoder's offset counts from the start of the chunk it was given, so the file is scanned line by line."""
    offset = 0
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                (line[3:] if number == 1 and line.startswith(b"\xef\xbb\xbf") else line).decode("utf-8")
            except UnicodeDecodeError as e:
                start = e.start + (3 if number == 1 and line.startswith(b"\xef\xbb\xbf") else 0)
                return (f"line {number} is not UTF-8 text (column {start + 1}, byte {offset + start} of the file: "
                        f"{line[start:start + 4]!r}, {e.reason})")
            offset += len(line)
    return f"not UTF-8 text ({error.reason})"


def delimiter_of(path: Path, data: DataSection) -> str:
    """data.delimiter, or by extension: tab for .tsv, comma otherwise."""
    if data.delimiter is not None:
        return data.delimiter
    return "\t" if path.suffix.lower() == ".tsv" else ","


def check_header_unique(header: list[str], path: Path) -> None:
    """A csv/tsv header that names a column twice: building rows as dicts would keep the last one silently."""
    seen = set()
    for name in header:
        if name in seen:
            raise PeftkitError(f"{path}: column {name!r} appears twice in the header ({', '.join(header)}); only "
                               "the last would be read. Rename or remove one of them")
        seen.add(name)


def _read_delimited(path: Path, data: DataSection) -> list[dict[str, Any]]:
    delimiter = delimiter_of(path, data)
    with path.open(encoding="utf-8-sig", newline="") as f:  # -sig: a BOM (Excel, Notepad) is not part of the header
        # SST-2 and AG News contain bare quotes inside fields: TSV is read without quote processing.
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        header = data.column_names if not data.has_header else next(reader, None)
        if not header:
            return []
        rows = []
        for line_number, values in enumerate(reader, start=2 if data.has_header else 1):
            if not values or values == [""]:
                continue
            if len(values) != len(header):
                raise ValueError(f"line {line_number} has {len(values)} fields, the header has {len(header)} "
                                 f"({', '.join(header)})")
            rows.append(dict(zip(header, values)))
        if rows and data.has_header:
            check_header_unique(header, path)
        return rows


def _read_jsonl(path: Path, data: DataSection) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        rows = json.loads(text)
    else:
        rows = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"line {line_number} is not JSON ({e.msg})") from None
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError("every line must be a JSON object")
    return rows


def _read_parquet(path: Path, data: DataSection) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises its own error types for corrupt files
        raise ValueError(str(e)) from None


_READERS = {"tsv": _read_delimited, "csv": _read_delimited, "json": _read_jsonl, "parquet": _read_parquet}


def read_hub_split(data: DataSection, split: str) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(data.dataset, data.dataset_config, split=split)
    except Exception as e:  # datasets raises many types (offline, missing split, missing config)
        if datasets.config.HF_HUB_OFFLINE:
            raise PeftkitError(offline_hub_message(data)) from None
        raise PeftkitError(f"data.dataset {data.dataset!r} split {split!r} could not be loaded: "
                           f"{str(e).splitlines()[0]}") from None
    return ds.to_list()


def offline_hub_message(data: DataSection) -> str:
    """What a hub-data recipe would download, said where it cannot (offline, not in the local cache): the dataset
    id, its config, the splits and the columns peftkit reads."""
    config = f" (config {data.dataset_config!r})" if data.dataset_config else ""
    splits = [data.train_split] + ([data.eval_split] if data.eval_split != data.train_split else [])
    columns = ", ".join(dict.fromkeys(column for column, _ in required_columns(data)))
    if data.format == "alpaca" and not data.prompt_template:
        columns += " (and input, where a row has one)"
    return (f"data.dataset {data.dataset!r}{config} is not in the local cache and the Hugging Face Hub is offline "
            f"(HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set): with network, peftkit downloads "
            f"{data.dataset}{config}, split{'s' if len(splits) > 1 else ''} {' and '.join(map(repr, splits))} "
            f"(an eval split the dataset lacks is held out from train instead), and reads the columns {columns}; "
            "or set data.train_file (and data.eval_file) to local copies")


def required_columns(data: DataSection) -> list[tuple[str, str]]:
    """(column, the recipe key that names it) pairs a format reads, templates' placeholders included."""
    import string

    def placeholders(template: str | None, key: str) -> list[tuple[str, str]]:
        if template is None:
            return []
        return [(name, key) for _, name, _, _ in string.Formatter().parse(template) if name]

    if data.format == CLASSIFICATION_FORMAT:
        return [(data.text_column, "data.text_column"), (data.label_column, "data.label_column")]
    if data.format == "text":
        return [(data.text_column, "data.text_column")]
    if data.format == "messages":
        return [(data.messages_column, "data.messages_column")]
    if data.format == "alpaca":
        prompt = placeholders(data.prompt_template, "data.prompt_template") or [("instruction", "data.format: alpaca")]
        completion = placeholders(data.completion_template, "data.completion_template") or [
            ("output", "data.format: alpaca")]
        return prompt + completion
    prompt = placeholders(data.prompt_template, "data.prompt_template") or [(data.prompt_column, "data.prompt_column")]
    completion = placeholders(data.completion_template, "data.completion_template") or [
        (data.completion_column, "data.completion_column")]
    return prompt + completion


def check_columns(rows: list[dict], data: DataSection, source: str) -> None:
    present = list(rows[0].keys())
    for role, column in (("text_column", data.text_column), ("label_column", data.label_column)):
        if column not in present and len(present) == 1:
            raise PeftkitError(wrong_delimiter_message(str(present[0]), source))
        if column not in present:
            raise PeftkitError(f"{source}: column {column!r} (data.{role}) not found; the file has columns "
                               f"{', '.join(map(str, present))}. Set data.{role} to one of them")


def wrong_delimiter_message(only_column: str, source: str) -> str:
    """A delimited file read with the wrong delimiter has one column whose name holds the real delimiter."""
    names = {";": "semicolon", ",": "comma", "\t": "tab", "|": "pipe"}
    found = [d for d in names if d in only_column]
    if not found:
        return (f"{source}: the file reads as one column {only_column!r}; a classification file needs a text and a "
                "label column (set data.delimiter if the fields are separated by another character)")
    d = max(found, key=only_column.count)
    shown = '"\\t"' if d == "\t" else f'"{d}"'
    return (f"{source}: the header reads as one column {only_column!r}: the delimiter looks wrong (the fields seem "
            f"separated by {names[d]}s); set data.delimiter: {shown}")
