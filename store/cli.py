"""Moved: `cllm db` is agent/cli/db.py (the store imports nothing from the agent).

A compatibility alias for tests/store/test_store.py (`from store.cli import db`), loaded only
when this module is imported; delete it once that test imports agent.cli.db.
"""


def __getattr__(name):
    if name == "db":
        from agent.cli.db import db
        return db
    raise AttributeError(name)
