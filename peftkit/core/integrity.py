"""Are a folder's files whole? Cheap checks before anything is loaded from a model, run or checkpoint folder.

transformers, peft and torch answer a truncated or garbage file with a traceback from deep inside (a safetensors
header error, a JSONDecodeError, "PytorchStreamReader failed"), or, for a missing tokenizer, with advice to
install sentencepiece. Here each file is read as little as possible (a safetensors header, a JSON document, a zip
directory) and a damaged one is a PeftkitError naming the file and what to do.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from peftkit.errors import PeftkitError

# A folder holds a usable tokenizer when one of these is there (tokenizer_config.json alone is not one: without
# a vocabulary transformers fails, or builds a tokenizer to which every word is unknown).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tekken.json", "vocab.model")
TORCH_PICKLES = (".pt", ".pth", ".bin")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")
"""Weight files that are pickles (they can run code when loaded): refused unless model.allow_pickle."""


def read_json_file(path: Path, advice: str = "") -> Any:
    """The parsed JSON document, or PeftkitError naming the file."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PeftkitError(f"{path} is not valid JSON (not UTF-8 text: the file is damaged){advice}") from None
    try:
        return json.loads(text)
    except ValueError as e:
        what = "empty" if not text.strip() else f"{e.msg} at line {e.lineno}" if hasattr(e, "msg") else str(e)
        raise PeftkitError(f"{path} is not valid JSON ({what}): the file is damaged or was cut short{advice}"
                           ) from None


def read_json_object(path: Path, advice: str = "") -> dict[str, Any]:
    value = read_json_file(path, advice)
    if not isinstance(value, dict):
        raise PeftkitError(f"{path} should hold a JSON object, found a {type(value).__name__}: the file is "
                           f"damaged{advice}")
    return value


def safetensors_keys(path: Path, advice: str = "") -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} from a safetensors file's header (no tensor is read). A truncated, empty or garbage
    file is a PeftkitError: safe_open checks that the header is whole and that the data covers what it promises."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except Exception as e:  # SafetensorError, OSError: the file cannot be what it claims
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PeftkitError(f"{path} is damaged ({path.stat().st_size:,} bytes; safetensors: {first}): it was cut "
                           f"short or is not a safetensors file{advice}") from None


def check_torch_archive(path: Path, advice: str = "") -> None:
    """A torch.save file (optimizer.pt, scheduler.pt, rng_state.pth) is a zip archive: its directory and the CRC of
    every member are checked, nothing is unpickled."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise PeftkitError(f"{path} is damaged ({path.stat().st_size:,} bytes; {e}): it was cut short{advice}"
                           ) from None
    if bad is not None:
        raise PeftkitError(f"{path} is damaged (member {bad} fails its checksum){advice}")


def check_folder_files(folder: Path, advice: str = "", torch_files: bool = False) -> None:
    """Every *.json and *.safetensors file of `folder` (not its subfolders) reads; torch archives too if asked.
    A sharded checkpoint's index must name shards that exist."""
    folder = Path(folder)
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        if path.suffix == ".json":
            read_json_file(path, advice)
        elif path.suffix == ".safetensors":
            safetensors_keys(path, advice)
        elif torch_files and path.suffix in TORCH_PICKLES:
            check_torch_archive(path, advice)
    for index in sorted(folder.glob("*.safetensors.index.json")):
        weight_map = read_json_object(index, advice).get("weight_map")
        if not isinstance(weight_map, dict):
            raise PeftkitError(f"{index} has no weight_map: the file is damaged{advice}")
        missing = sorted({str(f) for f in weight_map.values()} - {p.name for p in folder.iterdir()})
        if missing:
            raise PeftkitError(f"{folder}: shard {missing[0]} named by {index.name} is missing"
                               f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; the download or "
                               f"copy is incomplete{advice}")


def check_tokenizer_files(folder: Path, what: str) -> None:
    """`folder` must hold a tokenizer's vocabulary, not only its settings."""
    names = {p.name for p in Path(folder).iterdir()} if Path(folder).is_dir() else set()
    if not names & set(TOKENIZER_FILES) and not any(n.endswith(".tiktoken") for n in names):
        raise PeftkitError(f"{what} {folder} has no tokenizer files (one of {', '.join(TOKENIZER_FILES[:4])}, ...); "
                           "copy the tokenizer of the base model into it (tokenizer.save_pretrained)")


def weight_shapes(folder: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """{file name: {tensor: shape}} of a model folder's safetensors weights (headers only)."""
    return {p.name: safetensors_keys(p) for p in sorted(Path(folder).glob("*.safetensors"))}
