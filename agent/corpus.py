"""Documents read straight from files for one-shot training (`cllm train`, benchmarks), and
the shipped sample corpus.

Files are chosen and decoded by the crawler's own rules (agent/paths.py: default excludes
and .gitignore; agent/text.py: size cap, binary refusal, UTF-8 with BOMs, an optional
fallback codec), so `cllm train DIR` reads exactly what `cllm crawl DIR` would store. A
document's source is the first folder below the root it was found under (the root's own
name for files directly in it). Nothing here touches the store.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from agent.learn import Doc
from agent.paths import PathFilter, file_uri, walk_files
from agent.text import Refused, decode_text, read_file
from engine.errors import CllmError

REPO_CORPUS = Path(__file__).resolve().parent.parent / "corpus"   # the shipped sample corpus


def corpus_topics() -> list[Path]:
    """The sample corpus's topic folders (one source each), or [] when it is not installed."""
    if not REPO_CORPUS.is_dir():
        return []
    return sorted(p for p in REPO_CORPUS.iterdir() if p.is_dir())


def read_docs(paths: Sequence[Path], *, fallback_encoding: Optional[str] = None) -> list[Doc]:
    """Text documents under the given files and folders (refused files are left out)."""
    docs: list[Doc] = []
    for root in map(Path, paths):
        if not root.exists():
            raise CllmError(f"{root} does not exist", "give a file or folder of text")
        files = ([str(root)] if root.is_file() else
                 [it.path for it in walk_files(root, PathFilter(), gitignore=True)
                  if it.reason is None])
        for f in files:
            try:
                text = decode_text(read_file(f), fallback=fallback_encoding).text
            except Refused:
                continue
            if not text.strip():
                continue
            rel = Path(f).relative_to(root) if root.is_dir() else Path(Path(f).name)
            source = rel.parts[0] if len(rel.parts) > 1 else (root.name or "root")
            docs.append(Doc(uri=file_uri(f), source=source, text=text))
    if not docs:
        raise CllmError(f"no readable text files under {', '.join(map(str, paths))}",
                        "point at folders holding text files")
    return docs
