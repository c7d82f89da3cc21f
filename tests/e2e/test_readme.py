"""Every command in README.md is run by a test: here, or by the test named for it.

The walkthrough commands run for real, in order, through the CLI entry point in a temporary folder, on small real data
(SST-2 rows written as
the user's `my_reviews.csv` / `new_reviews.csv`), shortened by one override (`train.max_steps=2`). One more
substitution: `packaged:smollm2-135m-instruct` becomes a tiny random Llama with SmolLM2's tokenizer (tests never
train the real 135M model by default). Commands that cannot run here (installing, the test suite itself, GPU
launches, hour-long benchmarks) are listed in COVERED with the file that runs them (or its CPU equivalent) and a
string that file must contain; a README command matching neither list fails the test.
"""

from __future__ import annotations

import csv
import re
import shlex
import subprocess
from pathlib import Path

from tests.conftest import REPO, SST2
from tests.helpers.sft_fixtures import tiny_causal_dir  # noqa: F401

README = REPO / "README.md"
SHORTEN = ["train.max_steps=2"]
# command prefix -> (file that runs it or its CPU equivalent, a string that file contains)
COVERED = {
    "./install.sh && peftkit train": ("tests/e2e/test_newcomer_path.py", '"peftkit", "train", "train.max_steps=3"'),
    "./install.sh test && python -m pytest": (".ci/run", "./install.sh test && python -m pytest"),
    "python -m pytest -m slow": ("pyproject.toml", "slow: real-model or long runs"),
    "python -m pytest -m gpu": ("pyproject.toml", "gpu: needs CUDA"),
    "python -m pytest": (".ci/run", "python -m pytest"),
    "python -m ruff check .": (".ci/run", "python -m ruff check ."),
    "accelerate launch --config_file accelerate_configs/ddp.yaml": ("tests/distributed/test_resume_launch.py",
                                                                     'LAUNCH = "cpu_2proc.yaml"'),
    "accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml": ("tests/distributed/test_launch.py",
                                                                                 '"deepspeed_zero3.yaml"'),
    # from the repo root
    "peftkit validate recipes/": ("tests/unit/recipe/test_shipped_recipes.py", "check_recipe_inputs(recipe)"),
    "python -m benchmarks.speed.bench_classification": ("tests/unit/benchmarks/test_bench_helpers.py", "bench"),
    # a server runs until stopped: tests/e2e/test_serve.py starts it as a subprocess and talks to it over HTTP
    "peftkit serve": ("tests/e2e/test_serve.py", '"serve"'),
    "PEFTKIT_API_KEY=": ("tests/e2e/test_serve.py", "PEFTKIT_API_KEY"),
    "curl -s localhost:8000/v1/classify": ("tests/e2e/test_serve.py", "/v1/classify"),
    "pip install 'peftkit[serve]'": ("pyproject.toml", "serve = ["),
    "pip install 'peftkit[search]'": ("pyproject.toml", "search = ["),
    # a sweep runs many trainings: tests/unit/sweep/test_sweep.py runs real sweeps (two workers on one storage, resume)
    "peftkit sweep": ("tests/unit/sweep/test_sweep.py", '"peftkit", "sweep"'),
    "peftkit train runs/sst2-minilm-sweep/best_recipe.yaml": ("tests/unit/sweep/test_sweep.py",
                                                              'load_recipe(out / "best_recipe.yaml")'),
    # a budgeted search: tests/e2e/test_auto_cli.py runs `peftkit auto --budget 60s`, killed and resumed
    "peftkit auto": ("tests/e2e/test_auto_cli.py", '"peftkit", "auto"'),
    # augment and distillation: tests/e2e/test_distill_cli.py runs both commands on tiny models
    "peftkit augment": ("tests/e2e/test_distill_cli.py", 'main(["augment"'),
    "peftkit train recipes/sst2/minilm_distill_smollm2.yaml": ("tests/e2e/test_distill_cli.py", 'task="distillation"'),
    # GPU serving engines: what can be checked here is that the folders hold what they load
    "vllm serve": ("tests/e2e/test_serve.py", "test_sft_adapter_folder_has_what_vllm_multi_lora_loads"),
    "peftkit merge runs/my-sft && vllm serve": ("tests/e2e/test_serve.py", "vLLM"),
    "peftkit merge runs/sst2-smollm2-lora-cls && vllm serve": ("tests/e2e/test_serve.py", "vLLM"),
    # multi-task, transfer and merging train real SmolLM2 runs: the same commands on the tiny Llama (slow-marked)
    "peftkit train recipes/multitask/": ("tests/e2e/test_multitask_cli.py", '"train"'),
    "peftkit train recipes/sst2/smollm2_lora_gen.yaml adapter.init_from=": ("tests/e2e/test_multitask_cli.py",
                                                                           '["adapter"]["init_from"]'),
    "peftkit merge-adapters": ("tests/e2e/test_multitask_cli.py", '"merge-adapters"'),
    "python -m benchmarks.quality.bench_multitask": ("benchmarks/README.md",
                                                     "python -m benchmarks.quality.bench_multitask"),
}


def readme_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():  # a backslash continues the command
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def covered(command: str) -> tuple[str, str] | None:
    for prefix in sorted(COVERED, key=len, reverse=True):
        if command.startswith(prefix):
            return COVERED[prefix]
    return None


def runnable(command: str) -> bool:
    return command.startswith("peftkit ")


def test_every_readme_command_is_run_or_covered():
    commands = readme_commands()
    assert len(commands) >= 15
    for command in commands:
        where = covered(command)
        if where is None:
            assert runnable(command), f"README command run by no test: {command}"
            continue
        path, needle = where
        assert needle in (REPO / path).read_text(encoding="utf-8"), f"{command}: {path} no longer runs it"


def test_readme_opens_with_exactly_the_two_setup_commands():
    first_block = re.search(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S).group(1)
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in first_block.strip().splitlines()]
    assert lines == ["./install.sh && peftkit train", "./install.sh test && python -m pytest"]
    assert "./install.sh test && python -m pytest" in (REPO / ".ci" / "run").read_text()
    assert subprocess.run(["bash", "-n", str(REPO / "install.sh")]).returncode == 0


def write_reviews(path: Path, start: int, n: int) -> None:
    lines = (SST2 / "dev.tsv").read_text(encoding="utf-8").splitlines()[start:start + n]
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review", "sentiment"])
        for line in lines:
            text, label = line.split("\t")
            w.writerow([text.strip(), {"0": "negative", "1": "positive"}[label]])


def test_readme_walkthrough_runs(tmp_path, tiny_causal_dir, monkeypatch, capsys, one_torch_thread):
    """In order, through the command line's entry point (peftkit.cli.main, what `peftkit` and `python -m peftkit`
    call), in one process: a subprocess per command would spend most of the test importing torch."""
    from peftkit.cli import main

    write_reviews(tmp_path / "my_reviews.csv", 1, 60)
    write_reviews(tmp_path / "new_reviews.csv", 400, 12)
    tiny = tmp_path / "models" / "smollm2-tiny-random"  # init names the run by the model family: runs/*-smollm2
    tiny.parent.mkdir()
    tiny.symlink_to(tiny_causal_dir, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    ran = []
    for command in readme_commands():
        if covered(command) is not None:
            continue
        args = shlex.split(command)[1:]
        args = [str(tiny) if a == "packaged:smollm2-135m-instruct" else a for a in args]
        if args[0] == "train":
            args[2:2] = SHORTEN  # overrides follow the recipe
        code = main(args)
        out, err = capsys.readouterr()
        assert code == 0, f"{command}\n{out[-2000:]}\n{err[-3000:]}"
        ran.append((args[0], out))
        if args[0] == "init" and "--model" not in args:
            assert "wrote my_reviews.yaml" in out
            assert (tmp_path / "my_reviews.yaml").read_text().startswith("# peftkit train my_reviews.yaml\n")
        if args[0] == "generate":
            labels = [line.split()[0] for line in out.strip().splitlines()]
            assert sorted(labels) == ["negative", "positive"]
    assert [name for name, _ in ran] == ["init", "validate", "train", "evaluate", "merge", "push", "train", "train",
                                         "init", "train", "generate", "report"]  # serve: tests/e2e/test_serve.py
    run = tmp_path / "runs" / "my_reviews-minilm"
    assert (run / "metrics.json").is_file() and (run / "merged").is_dir()
    assert len(list(run.glob("eval-new_reviews-*/metrics.json"))) == 1
    assert (tmp_path / "runs" / "my_reviews-lr5e-4" / "adapter").is_dir()
    assert (tmp_path / "runs" / "my_reviews-smollm2" / "metrics.json").is_file()
    assert "ends the run" in ran[7][1]  # --resume of the finished run
    assert (run / "report.html").is_file() and 'id="per-class-f1"' in (tmp_path / "compare.html").read_text()
