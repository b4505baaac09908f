"""A checkpoint generates text, for `cllm generate`, `cllm chat` and `cllm serve`, and is
scored on files for `cllm eval`.

    checkpoint.py  the served checkpoint: loaded through the store's record, its decoding
                   copies made (DECODE_WEIGHTS, the default), its batcher made on first use
    stream.py      Sampling (how tokens are drawn; the CLI's defaults) and TextStream, the one
                   loop from ids to text (stop strings, whole UTF-8 characters, usage counts,
                   cancelling), read with `for` on a thread or `async for` on an event loop;
                   the plain chat template
    batcher.py     DecodeBatcher: concurrent generations as rows of one decoder on one thread,
                   which hands each id straight to its reader: a blocking iterator (`stream`)
                   or the event loop (`astream`, LoopStream: the thread-to-loop bridge)
    perplexity.py  the served model scored on files (nats, bits per byte, perplexity) as the
                   trainer's evaluation scores held-out text: `cllm eval`

No HTTP here: the server (agent/server/) bounds, validates and streams the requests.
"""
