"""Logging set up by the command line (issue 15): -v and -vv raise the project's loggers
only; other libraries (matplotlib's font manager printed 147 debug lines at -vv) stay at
WARNING unless -vvv; the first-run compilation notice shows at the default level."""
import logging

import pytest

from agent.cli.logs import NOTICES, OWN, configure_logging

NAMES = ("", *OWN, *NOTICES, "matplotlib", "matplotlib.font_manager", "numba", "urllib3")


@pytest.fixture(autouse=True)
def restore_levels():
    """Levels as in a fresh process (earlier tests in this one may have set them), restored after."""
    before = {n: logging.getLogger(n).level for n in NAMES}
    for n in NAMES[1:]:
        logging.getLogger(n).setLevel(logging.NOTSET)
    yield
    for n, level in before.items():
        logging.getLogger(n).setLevel(level)


@pytest.mark.parametrize("verbose, own, others", [
    (0, logging.WARNING, logging.WARNING), (1, logging.INFO, logging.WARNING),
    (2, logging.DEBUG, logging.WARNING), (3, logging.DEBUG, logging.DEBUG)])
def test_verbosity_raises_the_projects_loggers_and_only_then_other_libraries(verbose, own, others):
    configure_logging(verbose)
    for name in ("agent.daemon", "engine.spheres", "store.documents"):
        assert logging.getLogger(name).getEffectiveLevel() == own
    for name in ("matplotlib.font_manager", "numba.core.ssa", "urllib3.connectionpool"):
        assert logging.getLogger(name).getEffectiveLevel() == others
    assert logging.getLogger("engine.warmup").isEnabledFor(logging.INFO)


def test_quieter_than_default_hides_the_notices_too():
    configure_logging(-1)
    assert not logging.getLogger("engine.warmup").isEnabledFor(logging.INFO)
    assert not logging.getLogger("agent.daemon").isEnabledFor(logging.WARNING)
