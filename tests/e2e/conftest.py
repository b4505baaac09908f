"""Every e2e test: no `cllm agent` subprocess (tests/e2e/test_agent.py's AgentProc) outlives
the test that started it, whatever the test module."""
import pytest

from tests.e2e.test_agent import RUNNING


@pytest.fixture(autouse=True)
def _no_agent_outlives_its_test():
    yield
    while RUNNING:
        a = RUNNING.pop()
        if a.p.poll() is None:
            a.p.kill()
            a.p.wait(timeout=30)
