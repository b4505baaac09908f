"""Fixtures shared with the server tests: a tiny trained data directory."""
from tests.agent.server.conftest import corpus, trained  # noqa: F401  (fixtures)
