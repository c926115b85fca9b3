"""``python -m corral.cli``: the ``corral`` command without its entry point (tests, ``corral up``)."""

from corral.cli import main

main()
