"""What a run tells the person at the terminal."""

from __future__ import annotations

from peftkit.core.launch import is_main_process

_stage = ["loading"]


def say(message: str) -> None:
    """Progress for the person at the terminal, from the main process only."""
    if is_main_process():
        print(message, flush=True)


def warn(message: str) -> None:
    """A legal input that is almost surely a mistake: one line, from the main process only."""
    say(f"peftkit: warning: {message}")


def set_stage(text: str) -> None:
    """What the command is doing now ("loading the model", "evaluating"), for the message of a SIGTERM."""
    _stage[0] = text


def current_stage() -> str:
    return _stage[0]
