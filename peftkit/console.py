"""What a run tells the person at the terminal."""

from __future__ import annotations

import os


def say(message: str) -> None:
    """Progress for the person at the terminal, from the main process only."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(message, flush=True)
