"""Launching many runs: `python -m rrjax.launch.sweep` expands an experiment family into
its runs. The shell scripts that start one run on many accelerators are in `launch/`."""
