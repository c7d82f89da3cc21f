"""Code the benchmark scripts share: subprocess runs and ratio statistics (common), MFU (mfu), the measured-run
worker process (worker), and the step profiler's categories, tables and re-tabulation (profile_*). Imports nothing
from the script folders."""
