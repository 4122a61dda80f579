"""Small command-line tools, each run as `python -m rrjax.tools.<name>`."""
