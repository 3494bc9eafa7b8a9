"""`python -m nodehost`: the same as the `nodehost` command."""

from .cli import main

main()
