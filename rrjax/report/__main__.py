"""`python -m rrjax.report`: the command line of rrjax.report."""

from rrjax.report import main

main()
