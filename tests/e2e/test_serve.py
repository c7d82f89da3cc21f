"""`peftkit serve` end to end: the real server (`python -m peftkit serve`) on small trained runs, called over HTTP.

Runs: two classification-head runs on one tiny Llama (different seeds, so different adapters and heads), and an
SFT run and a generative_classification run on one tiny causal Llama. Servers listen on 127.0.0.1 only, and every
request loop here is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from tests.conftest import REPO, SST2, tiny_recipe, torch_threads, write_recipe  # noqa: E402
from tests.helpers.sft_fixtures import sft_data_files, tiny_causal_dir  # noqa: E402,F401

TEXTS = ["a gripping, beautifully acted film", "dull , lifeless and far too long", "it is a movie",
         "the best thing i have seen all year , truly", "bad"]


# ---------------------------------------------------------------------------------------------
# Runs and servers
# ---------------------------------------------------------------------------------------------


def train_in_process(recipe: dict, folder: Path) -> Path:
    from peftkit.cli import main

    path = write_recipe(folder / "recipe.yaml", recipe)
    with torch_threads(1):
        assert main(["train", str(path)]) == 0
    return Path(recipe["output_dir"])


@pytest.fixture(scope="module")
def runs(tiny_llama_dir, sst2_small, tiny_causal_dir, sft_data_files, tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, seed in (("a", 1), ("b", 2)):
        folder = tmp_path_factory.mktemp(f"serve-{name}")
        out[name] = train_in_process(tiny_recipe(tiny_llama_dir, sst2_small, folder / "run",
                                                 train={"max_steps": 2, "seed": seed}), folder)
    causal = {"model": {"name_or_path": str(tiny_causal_dir)}, "adapter": {"r": 4, "lora_alpha": 8},
              "train": {"max_steps": 2, "per_device_train_batch_size": 4, "report_to": [], "save_strategy": "no",
                        "disable_tqdm": True}}
    folder = tmp_path_factory.mktemp("serve-chat")
    out["chat"] = train_in_process({**causal, "task": "sft", "output_dir": str(folder / "run"),
                                    "data": {"format": "prompt_completion", "max_length": 64, "max_train_samples": 16,
                                             "max_eval_samples": 4,
                                             "train_file": str(sft_data_files["prompt_completion"])}}, folder)
    folder = tmp_path_factory.mktemp("serve-gen")
    dev = str(SST2 / "dev.tsv")
    out["gen"] = train_in_process({**causal, "task": "generative_classification", "output_dir": str(folder / "run"),
                                   "data": {"train_file": dev, "eval_file": dev, "text_column": "sentence",
                                            "label_names": ["negative", "positive"], "max_length": 48,
                                            "max_train_samples": 16, "max_eval_samples": 4,
                                            "prompt_template": "Review: {text}\nSentiment:"}}, folder)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `python -m peftkit serve` subprocess on 127.0.0.1, its output in files."""

    def __init__(self, args: list[str], log_dir: Path, name: str, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out, self.err = log_dir / f"{name}.out", log_dir / f"{name}.err"
        inherited = {k: v for k, v in os.environ.items() if k != "PEFTKIT_API_KEY"}  # only the key a test sets
        child_env = {**inherited, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
                     "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", **env}
        self.proc = subprocess.Popen([sys.executable, "-m", "peftkit", "serve", *args, "--port", str(self.port)],
                                     cwd=REPO, env=child_env, stdout=self.out.open("w"), stderr=self.err.open("w"))

    def wait_ready(self, timeout: float = 180) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited (rc {self.proc.returncode}):\n{self.logs()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError("server not ready in time:\n" + self.logs()[-3000:])

    def logs(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


API_KEY = "test-key-PLANTED-9f8e7d6c5b4a"


@pytest.fixture(scope="module")
def servers(runs, tmp_path_factory):
    """Two servers started together (their start-up overlaps): main (all four runs) and guarded (an API key, a queue
    of 8 texts, batches held up to 300 ms). The SIGTERM test stops the guarded one, so it comes after the other
    tests that use it."""
    logs = tmp_path_factory.mktemp("serve-logs")
    started = {
        "main": Server([f"{n}={p}" for n, p in runs.items()] + ["--max-wait-ms", "20", "--max-body-bytes", "65536",
                                                             "--max-new-tokens", "64"], logs, "main"),
        "guarded": Server([f"a={runs['a']}", "--max-queue", "8", "--max-texts", "8", "--max-wait-ms", "300"], logs,
                          "guarded", PEFTKIT_API_KEY=API_KEY),
    }
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def main_url(servers) -> str:
    return servers["main"].url


def post(url: str, path: str, body, **kwargs) -> httpx.Response:
    if isinstance(body, (bytes, str)):
        return httpx.post(url + path, content=body, headers={"content-type": "application/json"}, timeout=60,
                          **kwargs)
    return httpx.post(url + path, json=body, timeout=60, **kwargs)


# ---------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------


def test_classify_one_text_and_a_list(main_url):
    one = post(main_url, "/v1/classify", {"model": "a", "text": TEXTS[0]})
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["model"] == "a" and len(body["results"]) == 1
    result = body["results"][0]
    assert set(result["probabilities"]) == {"negative", "positive"} and result["model"] == "a"
    assert sum(result["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert result["label"] == max(result["probabilities"], key=result["probabilities"].get)
    many = post(main_url, "/v1/classify", {"model": "a", "text": TEXTS}).json()["results"]
    assert len(many) == len(TEXTS)
    assert many[0]["probabilities"] == pytest.approx(result["probabilities"], abs=1e-5)


def reference_probs(run_dir: Path, texts: list[str]) -> list[list[float]]:
    """Each text alone through peftkit's own loader (one adapter, no padding): what a batch must reproduce."""
    import torch

    from peftkit.model.base import load_trained_classifier
    from peftkit.runs.read import label_names_of, load_run

    run_dir, recipe = load_run(run_dir)
    tokenizer, model = load_trained_classifier(run_dir, recipe.model, recipe.quantization, label_names_of(run_dir))
    out = []
    with torch.inference_mode(), torch_threads(1):
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=recipe.data.max_length, return_tensors="pt")
            out.append(torch.softmax(model(**enc).logits.float(), -1)[0].tolist())
    return out


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_two_adapters_in_one_batch_answer_as_each_adapter_alone(main_url, runs):
    """Concurrent requests for runs a and b share forward passes (PEFT mixed-adapter batches, each run's own
    classification head from modules_to_save), padded together; every answer matches the run's adapter alone."""
    from concurrent.futures import ThreadPoolExecutor

    expected = {name: reference_probs(runs[name], TEXTS) for name in ("a", "b")}
    gap = max(abs(x - y) for pa, pb in zip(expected["a"], expected["b"]) for x, y in zip(pa, pb))
    assert gap > 1e-3, "the two adapters must answer differently for this test to mean anything"
    mixed_before = metric(main_url, "peftkit_mixed_adapter_batches_total")
    jobs = [(name, i) for _ in range(4) for i in range(len(TEXTS)) for name in ("a", "b")]
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda job: post(main_url, "/v1/classify", {"model": job[0], "text": TEXTS[job[1]]}),
                                jobs))
    for (name, i), r in zip(jobs, answers):
        assert r.status_code == 200, r.text
        got = list(r.json()["results"][0]["probabilities"].values())
        assert got == pytest.approx(expected[name][i], abs=2e-5), (name, i)
    assert metric(main_url, "peftkit_mixed_adapter_batches_total") > mixed_before, "no batch held both adapters"


def test_runs_on_one_base_share_it(servers):
    url = servers["main"].url
    models = {m["id"]: m for m in httpx.get(url + "/v1/models", timeout=30).json()["data"]}
    assert set(models) == {"a", "b", "chat", "gen"}
    assert models["a"]["base_group"] == models["b"]["base_group"]
    assert models["chat"]["base_group"] == models["gen"]["base_group"] != models["a"]["base_group"]
    assert models["gen"]["endpoints"] == ["/v1/classify", "/v1/completions", "/v1/chat/completions"]
    assert models["a"]["labels"] == ["negative", "positive"]
    logs = servers["main"].logs()
    assert "<- adapters: a, b" in logs and "<- adapters: chat, gen" in logs


def test_a_shared_base_is_one_copy_of_the_weights(runs):
    """In-process: two runs on one base load one model holding both adapters (and both heads), not two bases."""
    from peftkit.inference.forward import classify_head
    from peftkit.inference.runs import load_runs

    with torch_threads(1):
        one = load_runs([f"a={runs['a']}"], say=lambda m: None)
        two = load_runs([f"a={runs['a']}", f"b={runs['b']}"], say=lambda m: None)
    assert two[0].group is two[1].group and set(two[0].group.model.peft_config) == {"run0", "run1"}
    size = lambda runs: sum(p.numel() for p in runs[0].group.model.parameters())  # noqa: E731
    adapter = size(one) - sum(p.numel() for n, p in one[0].group.model.named_parameters() if "run0" not in n)
    assert size(two) == size(one) + adapter
    # A lone adapter is merged into its base for speed: it must still answer as the adapter model does.
    assert one[0].group.merged and not two[0].group.merged
    with torch_threads(1):
        merged = classify_head(one[0].group, [(one[0], t) for t in TEXTS], 32, lambda f: None)
        mixed = classify_head(two[0].group, [(two[i % 2], t) for i, t in enumerate(TEXTS * 2)], 4, lambda f: None)
    expected = {name: reference_probs(runs[name], TEXTS) for name in ("a", "b")}
    close = lambda x, y: max(abs(p - q) for a, b in zip(x, y) for p, q in zip(a, b)) < 2e-5  # noqa: E731
    assert close(merged, expected["a"])
    assert close(mixed, [expected["ab"[i % 2]][i % len(TEXTS)] for i in range(2 * len(TEXTS))])
    # a run's calibration.json temperature divides its own rows' logits only: p ** (1 / T), renormalised
    two[1].temperature = 2.0
    with torch_threads(1):
        scaled = classify_head(two[0].group, [(two[i % 2], t) for i, t in enumerate(TEXTS * 2)], 4, lambda f: None)

    def tempered(probs: list[float], t: float) -> list[float]:
        weights = [q ** (1 / t) for q in probs]
        return [w / sum(weights) for w in weights]

    assert close(scaled, [expected["a"][i % len(TEXTS)] if i % 2 == 0 else tempered(expected["b"][i % len(TEXTS)], 2.0)
                          for i in range(2 * len(TEXTS))])


def test_generative_classification_run(main_url, runs):
    """Label scoring as `peftkit evaluate` does it, normalised over the labels; batched per adapter."""
    import torch

    from peftkit.data.causal import classification_prompt, resolve_label_words
    from peftkit.data.causal_encode import encoder_for
    from peftkit.evaluation.causal import score_labels
    from peftkit.model.base import load_trained_causal_lm
    from peftkit.runs.read import load_run

    r = post(main_url, "/v1/classify", {"model": "gen", "text": TEXTS[:3]})
    assert r.status_code == 200, r.text
    got = [list(x["probabilities"].values()) for x in r.json()["results"]]
    run_dir, recipe = load_run(runs["gen"])
    tokenizer, model = load_trained_causal_lm(run_dir, recipe.model, recipe.quantization)
    words = resolve_label_words(recipe.data, ["negative", "positive"])
    with torch_threads(1):
        scores = score_labels(model, encoder_for(recipe, tokenizer),
                              [classification_prompt(recipe.data, t) for t in TEXTS[:3]], words, chat=False)
    expected = torch.softmax(torch.tensor(scores, dtype=torch.float64), -1)
    assert torch.allclose(torch.tensor(got, dtype=torch.float64), expected, atol=1e-5), (got, expected)


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible completions
# ---------------------------------------------------------------------------------------------


def test_completions_with_the_openai_client_plain_and_streamed(main_url):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=main_url + "/v1", api_key="unused", max_retries=0)
    whole = client.completions.create(model="chat", prompt="Review: a fine film\nSentiment:", max_tokens=12,
                                      temperature=0)
    assert whole.object == "text_completion" and whole.model == "chat"
    choice = whole.choices[0]
    assert choice.finish_reason in ("stop", "length") and 0 < whole.usage.completion_tokens <= 12
    chunks = list(client.completions.create(model="chat", prompt="Review: a fine film\nSentiment:", max_tokens=12,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason


def test_chat_completions_with_the_openai_client_plain_and_streamed(main_url):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=main_url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "Say something about this movie."}]
    whole = client.chat.completions.create(model="chat", messages=messages, max_tokens=10, temperature=0)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert isinstance(whole.choices[0].message.content, str) and whole.usage.completion_tokens <= 10
    chunks = list(client.chat.completions.create(model="chat", messages=messages, max_tokens=10, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_streaming_wire_format_ends_with_done(main_url):
    with httpx.stream("POST", main_url + "/v1/completions", timeout=60,
                      json={"model": "chat", "prompt": "Hello", "max_tokens": 4, "temperature": 0,
                            "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_stop_strings_cut_the_answer(main_url):
    plain = post(main_url, "/v1/completions", {"model": "chat", "prompt": "Hello", "max_tokens": 16,
                                               "temperature": 0}).json()["choices"][0]["text"]
    if len(plain) < 4:
        pytest.skip(f"the tiny model's answer is too short to cut: {plain!r}")
    stop = plain[2:4]
    cut = post(main_url, "/v1/completions", {"model": "chat", "prompt": "Hello", "max_tokens": 16, "temperature": 0,
                                             "stop": [stop]}).json()["choices"][0]
    assert cut["text"] == plain[:plain.index(stop)] and cut["finish_reason"] == "stop"


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------

BAD = {
    "malformed JSON": ("/v1/classify", b'{"model": "a", "text": ', 400, "malformed JSON"),
    "not an object": ("/v1/classify", b'["a"]', 400, "JSON object"),
    "text is a number": ("/v1/classify", {"model": "a", "text": 3}, 400, "text"),
    "list of numbers": ("/v1/classify", {"model": "a", "text": [1, 2]}, 400, "text"),
    "missing text": ("/v1/classify", {"model": "a"}, 400, "text"),
    "unknown field": ("/v1/classify", {"model": "a", "txt": "x", "text": "y"}, 400, "txt"),
    "empty text": ("/v1/classify", {"model": "a", "text": "   "}, 400, "empty"),
    "empty list": ("/v1/classify", {"model": "a", "text": []}, 400, "non-empty"),
    "oversized text": ("/v1/classify", {"model": "a", "text": "x" * 10_001}, 400, "at most 10000"),
    "too many texts": ("/v1/classify", {"model": "a", "text": ["x"] * 65}, 400, "at most 64"),
    "unknown model": ("/v1/classify", {"model": "nope", "text": "x"}, 404, "not served"),
    "model required": ("/v1/classify", {"text": "x"}, 400, "model"),
    "sft run cannot classify": ("/v1/classify", {"model": "chat", "text": "x"}, 400, "completions"),
    "head run cannot complete": ("/v1/completions", {"model": "a", "prompt": "x"}, 400, "classify"),
    "body too large": ("/v1/classify", {"model": "a", "text": ["y" * 9000] * 8}, 413, "bytes"),
    "n > 1": ("/v1/completions", {"model": "chat", "prompt": "x", "n": 2}, 400, "n=1"),
    "max_tokens over limit": ("/v1/completions", {"model": "chat", "prompt": "x", "max_tokens": 65}, 400, "limit"),
    "negative max_tokens": ("/v1/completions", {"model": "chat", "prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    "bad role": ("/v1/chat/completions", {"model": "chat", "messages": [{"role": "x", "content": "y"}]}, 400,
                 "role"),
    "no messages": ("/v1/chat/completions", {"model": "chat", "messages": []}, 400, "messages"),
    "wrong method": ("/v1/models", None, 405, ""),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_a_4xx_with_a_one_line_json_error(main_url, case):
    path, body, status, words = BAD[case]
    r = post(main_url, path, body) if body is not None else httpx.post(main_url + path, timeout=30)
    assert r.status_code == status, r.text
    assert "\n" not in r.text.strip()
    error = r.json()["error"]
    assert words.lower() in error["message"].lower() and error["type"]


def test_chunked_body_over_the_limit_is_refused(main_url):
    def chunks():
        for _ in range(20):
            yield b"x" * 8192

    r = httpx.post(main_url + "/v1/classify", content=chunks(), headers={"content-type": "application/json"},
                   timeout=30)
    assert r.status_code == 413 and "bytes" in r.json()["error"]["message"]


# ---------------------------------------------------------------------------------------------
# Security, overload, metrics
# ---------------------------------------------------------------------------------------------


def test_api_key_is_required_when_set_and_never_logged(servers):
    server = servers["guarded"]
    body = {"model": "a", "text": "fine"}
    assert post(server.url, "/v1/classify", body).status_code == 401
    wrong = post(server.url, "/v1/classify", body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    assert post(server.url, "/v1/classify", body, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert httpx.get(server.url + "/v1/models", timeout=30).status_code == 401
    assert httpx.get(server.url + "/health", timeout=30).status_code == 200
    logs = server.logs()
    assert "API key required" in logs and "127.0.0.1" in logs and API_KEY not in logs


def test_overload_answers_503_with_retry_after(servers):
    """A queue of 8 texts, 24 concurrent requests of 8 texts: some must wait their turn, the rest are refused."""
    from concurrent.futures import ThreadPoolExecutor

    url = servers["guarded"].url
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda i: post(url, "/v1/classify", {"model": "a", "text": TEXTS[:4] * 2},
                                               headers=headers), range(24)))
    statuses = [r.status_code for r in answers]
    assert set(statuses) == {200, 503}, statuses
    refused = next(r for r in answers if r.status_code == 503)
    assert refused.headers["Retry-After"] == "1" and "overloaded" in refused.json()["error"]["message"]
    depth = httpx.get(url + "/metrics", headers=headers, timeout=30).text
    assert "peftkit_queue_depth 0.0" in depth


def test_metrics_count_requests_batches_and_errors(main_url):
    post(main_url, "/v1/classify", {"model": "a", "text": TEXTS})
    post(main_url, "/v1/classify", {"model": "nope", "text": "x"})
    text = httpx.get(main_url + "/metrics", timeout=30).text
    assert metric(main_url, 'peftkit_requests_total{endpoint="/v1/classify",status="200"}') >= 1
    assert 'peftkit_requests_total{endpoint="/v1/classify",status="404"}' in text
    assert metric(main_url, 'peftkit_errors_total{kind="model_not_found"}') >= 1
    assert metric(main_url, 'peftkit_batch_rows_count{kind="head"}') >= 1
    assert 'peftkit_request_seconds_bucket{endpoint="/v1/classify",le="0.5"}' in text
    assert "peftkit_queue_depth 0.0" in text


def test_sigterm_during_load_answers_every_accepted_request(servers):
    """Clients keep sending (a new connection per request) while SIGTERM arrives. Every request the server
    accepted must reach its client as a 200 (the server's own count at exit equals the 200s the clients got); after
    that, connections are refused; the process exits 0. SIGTERM is sent while requests sit in the batcher's queue.
    A connection whose request the server had not yet read (still in the kernel's queue, or headers not parsed) is
    closed by uvicorn's shutdown: its client gets no byte of an answer, and the server's count shows it never
    accepted that request."""
    import re

    server = servers["guarded"]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    before = sum(int(float(line.rsplit(" ", 1)[1])) for line in
                 httpx.get(server.url + "/metrics", headers=headers, timeout=30).text.splitlines()
                 if line.startswith("peftkit_requests_total{"))
    before += 1  # the /metrics request itself is counted once it is answered
    results: list[tuple[float, float, str]] = []  # (sent, answered, outcome)
    lock = threading.Lock()

    def client(i: int) -> None:
        for _ in range(40):  # bounded
            sent = time.monotonic()
            try:
                r = httpx.post(server.url + "/v1/classify", json={"model": "a", "text": TEXTS[i % len(TEXTS)]},
                               headers={"Connection": "close", **headers}, timeout=60)
                outcome = str(r.status_code)
            except httpx.ConnectError:
                outcome = "refused"
            except httpx.TransportError as e:
                outcome = f"no answer: {type(e).__name__}"
            with lock:
                results.append((sent, time.monotonic(), outcome))
            if outcome != "200":
                return

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    polls = wait_for_queued_requests(server.url, headers)  # SIGTERM while requests surely sit in the batcher
    sigterm_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    rc = server.proc.wait(60)
    for t in threads:
        t.join(60)
    outcomes = [o for _, _, o in results]
    timeline = [(round(sent - sigterm_at, 2), round(done - sigterm_at, 2), o) for sent, done, o in results]
    assert rc == 0, server.logs()[-2000:]
    assert not [o for o in outcomes if o != "200" and o != "refused" and not o.startswith("no answer")], timeline
    final = re.search(r"stopped; answered (\d+) requests \(([^)]*)\)", server.logs())
    assert final, server.logs()[-2000:]
    assert int(final.group(1)) - before - polls == outcomes.count("200"), (final.group(0), before, polls, timeline)
    in_flight = [o for sent, done, o in results if sent < sigterm_at < done and o == "200"]
    assert in_flight, f"no request was in flight at SIGTERM: the test proved nothing: {timeline}"


def wait_for_queued_requests(url: str, headers: dict, timeout: float = 60) -> int:
    """Poll /metrics until the batcher's queue holds texts; returns how many polls were answered."""
    polls = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(url + "/metrics", headers=headers, timeout=30).text
        polls += 1
        depth = next(float(line.split()[1]) for line in text.splitlines() if line.startswith("peftkit_queue_depth "))
        if depth > 0:
            return polls
        time.sleep(0.02)
    raise AssertionError("the queue never filled")


# ---------------------------------------------------------------------------------------------
# The page, in a real headless browser
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")), reason="no chromium")
def test_page_shows_label_probabilities_in_a_headless_browser(main_url, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    url = f"{main_url}/?model=a&text=a+gripping%2C+beautifully+acted+film"
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                          "--dump-dom", url], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HOME": str(tmp_path)})
    html = dom.stdout
    assert 'data-done="1"' in html, dom.stderr[-2000:]
    expected = post(main_url, "/v1/classify", {"model": "a", "text": "a gripping, beautifully acted film"}).json()
    best = expected["results"][0]["label"]
    assert html.count('class="bar') == 2 and f'class="bar best"><span class="name">{best}</span>' in html


# ---------------------------------------------------------------------------------------------
# Beyond one machine: what vLLM's LoRA loader reads
# ---------------------------------------------------------------------------------------------


def test_sft_adapter_folder_has_what_vllm_multi_lora_loads(runs):
    """`vllm serve BASE --enable-lora --lora-modules chat=RUN/adapter` reads adapter_config.json (peft_type LORA,
    r, lora_alpha, target_modules) and adapter_model.safetensors with PEFT's key names; it refuses
    modules_to_save other than embeddings/lm_head. Checked here (vLLM itself needs a GPU)."""
    from safetensors import safe_open

    adapter = runs["chat"] / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["target_modules"] and not config.get("modules_to_save")
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("base_model.model.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    assert not list(adapter.glob("*.bin"))
