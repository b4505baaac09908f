"""Moved: the commands are agent/cli/model.py (train, generate, neighbours, bench).

A compatibility alias for tests/e2e (`from agent.commands import REPO_CORPUS, read_docs`);
delete it once they import agent.cli.model and agent.cli.common.
"""
from agent.cli.common import REPO_CORPUS
from agent.cli.model import TEXT_SUFFIXES, read_docs

__all__ = ["REPO_CORPUS", "TEXT_SUFFIXES", "read_docs"]
