"""``python -m consist``: the ``consist`` command."""

from .cli import main

main()
