"""`python -m services.cli` runs the `corral` command."""

from services.cli.main import main

main()
