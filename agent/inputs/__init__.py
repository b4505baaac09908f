"""Files and pages become documents: which files are inputs (`paths.py`: include/exclude
rules, .gitignore, walks), text from bytes (`text.py`: decoding, binary refusal), recording a
document or its refusal in the store (`ingest.py`, the `Ingestor`, and the agent's ingest
thread over the file monitor's events, `IngestLoop`, whose event type is `events.py`), and
the corpora read straight from disk for `cllm train`
and the shipped sample corpus (`corpus.py`). agent/file_monitor.py and agent/crawler.py feed
them."""
