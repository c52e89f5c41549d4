"""``python -m fopru.pareto``: see :func:`fopru.pareto.cli.main`."""

from fopru.pareto.cli import main

main()
