"""One training cycle, from the store's backlog to a committed checkpoint: what a cycle reads
from the store (`plan.py`), batches in ledger order (`backlog.py`), the learning run itself
(`learn.py`), its one store transaction (`commit.py`), a running cycle's live progress
(`progress.py`), a data directory's model and checkpoint files (`model_state.py`), start-up
recovery and checkpoint retention (`recovery.py`) and the store's trainer lease
(`trainer_lease.py`). agent/continuous_trainer.py decides when cycles run and drives them."""
