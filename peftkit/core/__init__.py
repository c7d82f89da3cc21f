"""Plumbing every stage uses: atomic writes, the console, quieting third-party noise, progress lines, file
integrity checks, and the launch facts (rank, world size: the one `is_main_process`; FSDP / ZeRO-3 sharding).

Imports: `peftkit.errors` only. Nothing here imports torch at module level.
"""
