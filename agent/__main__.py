"""`python -m agent ...` runs the `cllm` command line."""
from agent.cli import main

main()
