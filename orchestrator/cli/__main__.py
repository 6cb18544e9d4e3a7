"""`python -m orchestrator.cli`: the `conclave` command."""

from orchestrator.cli import main

main()
