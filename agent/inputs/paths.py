"""Which files are inputs: include/exclude patterns, `.gitignore` rules, the walk, file uris.

Holds DEFAULT_EXCLUDES (temp, swap and partial files, VCS folders, build outputs), the
`PathFilter` of include/exclude patterns (gitignore syntax), the per-folder `.gitignore`
stack, `walk_files` (depth first, name order; symlinks reported as refused unless
followed, and then loops detected), and `file_uri` / `uri_to_path`, which map a path's
exact bytes to a document uri and back.

It reads no file contents (text.py does) and never touches the store; a refused entry is a
`WalkItem` with a reason, for the caller to record. `is_folder` is the one lstat test of
"a folder is at this path" the monitor and the ingestor share.
"""
from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.parse import unquote_to_bytes, urlsplit

import pathspec

# Temp, swap and partial files, VCS folders and build outputs: never documents.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    # editors' temp and swap files, partial downloads
    "*~", "*.swp", "*.swo", "*.swx", ".*.sw?", "*.tmp", "*.temp", "*.bak", "*.part",
    "*.partial", "*.crdownload", "*.download", ".#*", "#*#", "4913", ".goutputstream-*",
    "*.kate-swp", ".~lock.*", "~$*", ".DS_Store", "Thumbs.db",
    # version control
    ".git/", ".hg/", ".svn/", ".bzr/", "CVS/", "_darcs/", ".jj/",
    # build outputs and caches
    "__pycache__/", "*.py[cod]", "build/", "dist/", "node_modules/", "target/", ".tox/",
    ".nox/", ".venv/", "venv/", ".mypy_cache/", ".pytest_cache/", ".ruff_cache/",
    "*.egg-info/", ".gradle/", ".idea/", ".cache/",
    # our own store, should a data directory sit inside a watched folder
    "*.sqlite3", "*.sqlite3-*", "cllm.lock",
)


class PathFilter:
    """Include/exclude rules (gitignore syntax) on paths relative to a root.

    `include=None` takes every file; `exclude=None` means DEFAULT_EXCLUDES (pass `()` for
    none). Directories are tested with a trailing slash so `build/` prunes whole trees.
    """

    def __init__(self, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None) -> None:
        self.include_patterns = tuple(include) if include is not None else None
        self.exclude_patterns = tuple(DEFAULT_EXCLUDES if exclude is None else exclude)
        self._include = pathspec.GitIgnoreSpec.from_lines(self.include_patterns) if include is not None else None
        self._exclude = pathspec.GitIgnoreSpec.from_lines(self.exclude_patterns)

    def excluded(self, rel: str, is_dir: bool = False) -> bool:
        """True when `rel` (posix, relative to the root) or a folder above it is excluded."""
        return bool(self._exclude.match_file(rel + "/" if is_dir else rel))

    def accepts(self, rel: str) -> bool:
        """True for a file that is not excluded and matches the include patterns."""
        if self.excluded(rel):
            return False
        return self._include is None or bool(self._include.match_file(rel))


@dataclass(frozen=True)
class WalkItem:
    path: str  # as reached from the root (through the link, if any)
    reason: str | None = None  # set: a refused entry to record, not a file to read


class _GitIgnores:
    """Stack of per-folder .gitignore specs; the deepest matching rule wins, as in git."""

    def __init__(self) -> None:
        self._specs: dict[str, pathspec.GitIgnoreSpec] = {}

    def load(self, dir_rel: str, dir_path: str) -> None:
        try:
            with open(os.path.join(dir_path, ".gitignore"), encoding="utf-8", errors="replace") as f:
                self._specs[dir_rel] = pathspec.GitIgnoreSpec.from_lines(f.read().splitlines())
        except OSError:
            pass

    def ignored(self, rel: str, is_dir: bool) -> bool:
        parts = rel.split("/")
        for depth in range(len(parts) - 1, -1, -1):
            base = "/".join(parts[:depth])
            spec = self._specs.get(base)
            if spec is None:
                continue
            sub = "/".join(parts[depth:]) + ("/" if is_dir else "")
            res = spec.check_file(sub)
            if res.include is not None:
                return bool(res.include)
        return False


def walk_files(root: str | os.PathLike, path_filter: PathFilter | None = None, *,
               follow_symlinks: bool = False, gitignore: bool = False,
               stop_event: "threading.Event | None" = None,
               on_linked_folder: "Callable[[str, str], None] | None" = None) -> Iterator[WalkItem]:
    """Every file under `root` that the filter accepts, depth first, in name order.

    Symlinks are reported as refused ("not followed") unless `follow_symlinks`; when
    followed, a link back to a folder being walked is reported as a loop and a folder
    reached twice is walked once (`on_linked_folder(link, target)` hears of each linked
    folder walked). Unreadable folders are reported, never raised.
    """
    path_filter = path_filter or PathFilter()
    root = os.path.abspath(root)
    ignores = _GitIgnores() if gitignore else None
    try:
        st = os.stat(root)
    except OSError as e:
        yield WalkItem(root, f"cannot read folder: {e.strerror or e}")
        return
    visited = {(st.st_dev, st.st_ino)}
    # stack of (path, rel, ancestors' (dev, ino)) so links to an ancestor are loops; the
    # folders above the root count too (a link to one of them would walk the root again)
    above, real = set(), os.path.realpath(root)
    while True:
        try:
            ast = os.stat(real)
            above.add((ast.st_dev, ast.st_ino))
        except OSError:
            pass
        parent = os.path.dirname(real)
        if parent == real:
            break
        real = parent
    stack: list[tuple[str, str, frozenset]] = [(root, "", frozenset(visited | above))]
    while stack:
        if stop_event is not None and stop_event.is_set():
            return
        dir_path, dir_rel, ancestors = stack.pop()
        if ignores is not None:
            ignores.load(dir_rel, dir_path)
        try:
            with os.scandir(dir_path) as it:
                # real folders before links, so content is walked under its own name when it can be
                entries = sorted(it, key=lambda e: (_is_link(e), e.name))
        except OSError as e:
            yield WalkItem(dir_path, f"cannot read folder: {e.strerror or e}")
            continue
        subdirs = []
        for entry in entries:
            if stop_event is not None and stop_event.is_set():  # per entry: folders can be huge
                return
            rel = f"{dir_rel}/{entry.name}" if dir_rel else entry.name
            try:
                is_link = entry.is_symlink()
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError as e:
                yield WalkItem(entry.path, f"cannot stat: {e.strerror or e}")
                continue
            if is_link:
                if not follow_symlinks:
                    if not path_filter.excluded(rel):
                        yield WalkItem(entry.path, "symbolic link (not followed)")
                    continue
                try:
                    target = os.stat(entry.path)
                except OSError as e:
                    if path_filter.excluded(rel):
                        continue
                    yield WalkItem(entry.path, "symlink loop (too many levels of symbolic links)"
                                   if e.errno == errno.ELOOP else "dangling symbolic link")
                    continue
                is_dir = stat.S_ISDIR(target.st_mode)
                if is_dir:
                    key = (target.st_dev, target.st_ino)
                    if path_filter.excluded(rel, is_dir=True) or (ignores and ignores.ignored(rel, True)):
                        continue
                    if key in ancestors:
                        yield WalkItem(entry.path, "symlink loop (points to a folder above it)")
                    elif key not in visited:
                        visited.add(key)
                        subdirs.append((entry.path, rel, ancestors | {key}))
                        if on_linked_folder is not None:
                            on_linked_folder(entry.path, os.path.realpath(entry.path))
                    continue
            if is_dir:
                if path_filter.excluded(rel, is_dir=True) or (ignores and ignores.ignored(rel, True)):
                    continue
                try:
                    dst = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                key = (dst.st_dev, dst.st_ino)
                if key not in visited:  # a bind mount can show a folder twice
                    visited.add(key)
                    subdirs.append((entry.path, rel, ancestors | {key}))
                continue
            if not path_filter.accepts(rel) or (ignores and ignores.ignored(rel, False)):
                continue
            yield WalkItem(entry.path)
        stack.extend(reversed(subdirs))


def is_folder(path: str | os.PathLike) -> bool:
    """Whether a folder itself is at `path` (lstat: a symlink to one is not); False when
    nothing is there."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _is_link(entry: os.DirEntry) -> bool:
    try:
        return entry.is_symlink()
    except OSError:
        return False


def file_uri(path: str | os.PathLike | bytes) -> str:
    """The document uri of a local path: absolute, symlinks kept, percent-encoded.

    The path's bytes are what gets encoded, so a name that is not UTF-8 (b"bad\\xff.txt",
    "bad\\udcff.txt" as os.fsdecode gives it) becomes "bad%FF.txt" and uri_to_path gives
    the same path back.
    """
    return Path(os.path.abspath(os.fsdecode(path))).as_uri()


def uri_to_path(uri: str) -> str | None:
    """The local path of a file uri (the inverse of file_uri), None for other schemes."""
    parts = urlsplit(uri)
    return os.fsdecode(unquote_to_bytes(parts.path)) if parts.scheme == "file" else None
