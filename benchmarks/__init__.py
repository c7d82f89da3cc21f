"""peftkit's benchmarks: each script is one command, run from the repository root as
`python -m benchmarks.<group>.<script>`; shared code in `benchmarks.lib`; results (JSON + markdown tables) in
benchmarks/results/."""
