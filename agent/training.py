"""Old names of agent/learn.py and agent/model_state.py, for callers moved in the same
change (removed once the CLI package lands)."""
from agent.learn import Doc, LearnResult as RunResult, learn as train_run, split_validation  # noqa: F401
from agent.model_state import (CKPT_RE, TOKENIZER_RE, ModelState as State, checkpoint_dir,  # noqa: F401
                               checkpoint_files as list_checkpoints, checkpoint_path,
                               latest_model_state as latest_state, load_model_state as load_state,
                               new_model_state as new_state, save_model_state as save_state,
                               tokenizer_path)
