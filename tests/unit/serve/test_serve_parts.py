"""Parts of `peftkit serve` that need no model: stop strings, run names, who can reach the server, the batcher."""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("fastapi")

from peftkit.errors import PeftkitError  # noqa: E402
from peftkit.inference.forward import StopText  # noqa: E402
from peftkit.inference.runs import parse_run_arg  # noqa: E402
from peftkit.serve.batcher import Batcher, Job, Overloaded  # noqa: E402
from peftkit.serve.command import exposure  # noqa: E402


def test_stop_string_split_across_pieces_is_never_streamed():
    sent: list[str] = []
    out = StopText(["END"], sent.append)
    for piece in ["Hello E", "N", "D and more"]:
        out.feed(piece)
    out.finish()
    assert out.stopped and out.text == "Hello " and "".join(sent) == "Hello "


def test_without_stop_strings_every_piece_goes_out_at_once():
    sent: list[str] = []
    out = StopText([], sent.append)
    out.feed("ab")
    assert sent == ["ab"]
    out.feed("c")
    out.finish()
    assert "".join(sent) == "abc" and not out.stopped


def test_run_names(tmp_path):
    (tmp_path / "my-run").mkdir()
    assert parse_run_arg(str(tmp_path / "my-run")) == ("my-run", tmp_path / "my-run")
    assert parse_run_arg(f"sst2={tmp_path}")[0] == "sst2"
    with pytest.raises(PeftkitError, match="model name"):
        parse_run_arg(f"bad name={tmp_path}")


def test_exposure_line_says_who_can_reach_it():
    assert "this machine only" in exposure("127.0.0.1", False)
    assert "this machine only" in exposure("::1", True)
    wide = exposure("0.0.0.0", False)
    assert "other machines" in wide and "WARNING" in wide
    assert "WARNING" not in exposure("0.0.0.0", True)


def test_batcher_gathers_concurrent_jobs_and_bounds_its_queue():
    """A slow first batch lets the next requests queue up: they run together in one call, and a queue of 4 texts
    refuses what does not fit."""
    calls: list[list[int]] = []

    def run_batch(key, jobs):
        calls.append([j.payload for j in jobs])
        time.sleep(0.2)
        return [j.payload * 10 for j in jobs]

    async def main():
        batcher = Batcher(run_batch, max_batch_size=8, max_wait_ms=1, max_queue=4)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(Job(("head", 0), 0, 1), 5))
        await asyncio.sleep(0.05)  # the worker is busy with job 0
        rest = [asyncio.ensure_future(batcher.submit(Job(("head", 0), i, 1), 5)) for i in range(1, 7)]
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        batcher.stop(5)
        return results

    results = asyncio.run(main())
    assert results[:5] == [0, 10, 20, 30, 40]
    assert all(isinstance(r, Overloaded) for r in results[5:])
    assert calls == [[0], [1, 2, 3, 4]]
