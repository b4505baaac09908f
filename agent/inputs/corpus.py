"""Documents read straight from files for one-shot training (`cllm train`, benchmarks), and
the shipped sample corpus.

Files are chosen and decoded by the crawler's own rules (agent/inputs/paths.py: default excludes
and .gitignore; agent/inputs/text.py: size cap, binary refusal, UTF-8 with BOMs, an optional
fallback codec), so `cllm train DIR` reads exactly what `cllm crawl DIR` would store, under
the same source name: the folder as given (a file's own folder for a file), as the crawler
and the ingestor name it. Nothing here touches the store.

The sample corpus is package data of `agent` (agent/sample_corpus/, with its PSF notice),
found through importlib.resources, so a wheel has it as a checkout does.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence, Union

from agent.training.learn import Doc
from agent.inputs.paths import PathFilter, file_uri, walk_files
from agent.inputs.text import Refused, decode_text, key_material, read_file
from engine.errors import CllmError

CORPUS_DIR = "sample_corpus"     # inside the agent package


def sample_corpus() -> Optional[Path]:
    """The shipped sample corpus's folder, or None when it is not installed."""
    root = resources.files("agent") / CORPUS_DIR
    if not isinstance(root, Path):       # a zipped install: no folder to walk or watch
        return None
    return root if root.is_dir() else None


SAMPLE_CORPUS = sample_corpus()


def corpus_topics() -> list[Path]:
    """The sample corpus's topic folders (one source each), or [] when it is not installed."""
    root = sample_corpus()
    if root is None:
        return []
    return sorted(p for p in root.iterdir() if p.is_dir())


def read_docs(paths: Sequence[Union[str, os.PathLike]], *,
              fallback_encoding: Optional[str] = None,
              own_dirs: Sequence[Union[str, os.PathLike]] = ()) -> list[Doc]:
    """Text documents under the given files and folders (refused files are left out, and so
    are credentials, key material and the data directories `own_dirs`, as the crawler
    refuses them)."""
    docs: list[Doc] = []
    path_filter = PathFilter(own_dirs=own_dirs)
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise CllmError(f"{root} does not exist", "give a file or folder of text")
        if root.is_file():
            files = [] if path_filter.private.reason(root) else [str(root)]
            source = os.path.dirname(str(given))                        # as ingest_file names it
        else:
            files = [it.path for it in walk_files(root, path_filter, gitignore=True)
                     if it.reason is None]
            source = str(given)                                         # as Crawler.walk does
        for f in files:
            try:
                text = decode_text(read_file(f), fallback=fallback_encoding).text
            except Refused:
                continue
            if not text.strip() or key_material(text):
                continue
            docs.append(Doc(uri=file_uri(f), source=source, text=text))
    if not docs:
        raise CllmError(f"no readable text files under {', '.join(map(str, paths))}",
                        "point at folders holding text files")
    return docs
