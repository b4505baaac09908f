"""A checkpoint generates text: loading the served checkpoint (`checkpoint.py`), the
generation loop with sampling, stop strings and the chat template (`stream.py`) and the
continuous batching of concurrent generations into one decoder (`batcher.py`). Used by
`cllm generate`, `cllm chat` and `cllm serve` (agent/server/)."""
