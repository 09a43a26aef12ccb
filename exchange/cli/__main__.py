"""`python -m exchange.cli` runs the command line."""

from exchange.cli.main import main

main()
