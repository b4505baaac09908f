"""Controls are rows of the store: set by one process, read by another."""
from store import controls


def test_pausing_and_resuming_training_is_a_row_every_process_reads(store_target):
    a, b = store_target.open(), store_target.open()
    try:
        with b.session() as s:
            assert not controls.paused(s)
        with a.session() as s:
            controls.set_paused(s, True, by="dashboard")
        with b.session() as s:
            assert controls.paused(s)
        with a.session() as s:
            controls.set_paused(s, False, by="dashboard")
        with b.session() as s:
            assert not controls.paused(s)
    finally:
        a.close()
        b.close()
