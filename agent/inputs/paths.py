"""Which files are inputs: include/exclude patterns, `.gitignore` rules, the walk, file uris.

Holds DEFAULT_EXCLUDES (temp, swap and partial files, VCS folders, build outputs), the
`PathFilter` of include/exclude patterns (gitignore syntax), PRIVATE_PATTERNS and
`PrivateRules` (credentials, key material and the agent's own data directory: never read,
each refusal recorded with its reason), the per-folder `.gitignore` stack, `walk_files`
(depth first, name order; symlinks reported as refused unless followed, and then loops
detected), and `file_uri` / `uri_to_path`, which map a path's exact bytes to a document
uri and back.

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


# Credentials and key material: never read by default, by the watcher or a folder crawl.
# Each pattern (gitignore syntax) is matched against the whole path, so it holds at any
# depth and above a watched root too (`--watch ~/.ssh` reads nothing). A match is not an
# exclusion: it is recorded as skipped with its reason. `--include PATTERN` naming one of
# them exactly (".env", ".ssh/"; "**/" in front and "/" at the end do not matter) takes
# that one back; a broad pattern ("*", ".env*") takes back none. Simple on purpose:
# `.env.*` refuses `.env.example` too. Key material in a file's text is refused whatever
# the file is called (text.key_material), and the agent's own data directory is never read.
PRIVATE_PATTERNS: tuple[tuple[str, str], ...] = (
    (".ssh/", "SSH keys"), ("id_rsa", "an SSH private key"), ("id_dsa", "an SSH private key"),
    ("id_ecdsa", "an SSH private key"), ("id_ed25519", "an SSH private key"),
    ("id_ecdsa_sk", "an SSH private key"), ("id_ed25519_sk", "an SSH private key"),
    (".gnupg/", "GnuPG keys"), (".aws/", "AWS credentials"),
    (".config/gcloud/", "Google Cloud credentials"), (".azure/", "Azure credentials"),
    (".kube/", "Kubernetes credentials"), (".docker/config.json", "Docker registry credentials"),
    (".netrc", "login credentials"), ("_netrc", "login credentials"),
    (".pgpass", "PostgreSQL passwords"), (".my.cnf", "MySQL credentials"),
    (".git-credentials", "git credentials"), (".npmrc", "npm tokens"),
    (".pypirc", "PyPI tokens"), (".env", "environment secrets"),
    (".env.*", "environment secrets"), (".envrc", "environment secrets"),
    ("*.pem", "a key or certificate"), ("*.key", "a private key"),
    ("*.p12", "a key store"), ("*.pfx", "a key store"),
    (".local/share/keyrings/", "keyrings"), ("*.keychain", "a keychain"),
    ("*.keychain-db", "a keychain"), ("*.kdbx", "a password database"),
    (".password-store/", "a password store"),
    (".mozilla/", "a browser profile"), (".config/google-chrome/", "a browser profile"),
    (".config/chromium/", "a browser profile"), (".config/BraveSoftware/", "a browser profile"),
    ("Library/Application Support/Google/Chrome/", "a browser profile"),
    ("Library/Application Support/Firefox/", "a browser profile"),
    ("cllm.toml", "cllm settings (may hold a database URL with its password)"),
)
OWN_DATA_DIR = "never read: the agent's own data directory"
# DATA_DIR/inbox: the one folder of the data directory that is an input (`cllm agent` with
# nothing configured watches it, agent/cli/run.py) when it is watched as a root of its own
OWN_INBOX = "inbox"


def _pattern_name(pattern: str) -> str:
    """What a pattern names, for --include to take a private one back: "**/" in front and
    "/" around do not count."""
    p = pattern.strip()
    while p.startswith("**/"):
        p = p[3:]
    return p.strip("/")


class PrivateRules:
    """PRIVATE_PATTERNS less those `include` names exactly, and the agent's own data
    directories (`own_dirs`: never read wherever they sit, compared by resolved path and,
    in a walk, by device and inode; only their OWN_INBOX, watched as a root, is read).

    `reason(path)` is the one test every file read passes (the Ingestor's); `matches`,
    `own_key` and `own_rels` are its cheap parts for a walk and a watcher's events.
    """

    def __init__(self, include: Iterable[str] | None = None,
                 own_dirs: Iterable[str | os.PathLike] = ()) -> None:
        named = {_pattern_name(p) for p in include or ()}
        self.rules = tuple((p, what) for p, what in PRIVATE_PATTERNS
                           if _pattern_name(p) not in named)
        self.taken_back = tuple(p for p, _ in PRIVATE_PATTERNS if _pattern_name(p) in named)
        # a pattern with a slash inside is anchored in gitignore syntax: "**/" frees it
        self._spec = pathspec.GitIgnoreSpec.from_lines(
            ("**/" + p if "/" in p.rstrip("/") else p) for p, _ in self.rules)
        self.own_dirs = tuple(os.path.realpath(d) for d in own_dirs)
        self._own_keys = set()
        for d in self.own_dirs:
            try:
                st = os.stat(d)
            except OSError:
                continue            # not there yet: the resolved path still guards it
            self._own_keys.add((st.st_dev, st.st_ino))

    def matches(self, path: str | os.PathLike, is_dir: bool = False) -> str | None:
        """The reason `path` (absolute) matches a private pattern, or None."""
        rel = os.fsdecode(path).replace(os.sep, "/").lstrip("/")
        if not rel:
            return None
        res = self._spec.check_file(rel + "/" if is_dir else rel)
        if not res.include:
            return None
        pattern, what = self.rules[res.index]
        return (f"never read: {what} (the private pattern {pattern!r}; name it with "
                f"--include {pattern!r} to read it)")

    def own(self, real: str) -> bool:
        """Whether the resolved path `real` is an own data directory or inside one (its
        inbox aside)."""
        return any(_inside(real, d) and not _inside(real, os.path.join(d, OWN_INBOX))
                   for d in self.own_dirs)

    def own_key(self, st: os.stat_result) -> bool:
        """Whether a folder's stat is an own data directory's (bind mounts, links)."""
        return (st.st_dev, st.st_ino) in self._own_keys

    def own_rels(self, root: str | os.PathLike) -> tuple[str, ...]:
        """The own data directories as paths relative to `root` (posix; "." when `root`
        is one or lies inside one, its inbox aside), for a watcher to drop their events
        unseen. A root above a data directory drops its inbox's events too, as its walk
        refuses the whole folder: the inbox is read as a root of its own."""
        real = os.path.realpath(root)
        out = []
        for d in self.own_dirs:
            if _inside(real, d):
                if self.own(real):
                    out.append(".")
            elif _inside(d, real):
                out.append(os.path.relpath(d, real).replace(os.sep, "/"))
        return tuple(out)

    def reason(self, path: str | os.PathLike, is_dir: bool = False) -> str | None:
        """Why the file or folder at `path` is never read, or None: inside an own data
        directory (resolved), or a private pattern on its path or on where it leads."""
        path = os.path.abspath(os.fsdecode(path))
        real = os.path.realpath(path)
        if self.own(real):
            return OWN_DATA_DIR
        why = self.matches(path, is_dir)
        if why is None and real != path:        # a link: what it leads to, as what it is
            why = self.matches(real, os.path.isdir(real))
        return why


def _inside(path: str, folder: str) -> bool:
    """`path` is `folder` or below it (both resolved)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class PathFilter:
    """Include/exclude rules (gitignore syntax) on paths relative to a root, and the
    private rules (`private`, a PrivateRules: credentials and the `own_dirs`).

    `include=None` takes every file; `exclude=None` means DEFAULT_EXCLUDES (pass `()` for
    none). Directories are tested with a trailing slash so `build/` prunes whole trees.
    An excluded path is no input (nothing is recorded); a private one is refused, and the
    refusal recorded, by whoever walks or watches.
    """

    def __init__(self, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None,
                 *, own_dirs: Iterable[str | os.PathLike] = ()) -> None:
        self.include_patterns = tuple(include) if include is not None else None
        self.exclude_patterns = tuple(DEFAULT_EXCLUDES if exclude is None else exclude)
        self._include = pathspec.GitIgnoreSpec.from_lines(self.include_patterns) if include is not None else None
        self._exclude = pathspec.GitIgnoreSpec.from_lines(self.exclude_patterns)
        self.private = PrivateRules(self.include_patterns, own_dirs)

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
    folder walked). Unreadable folders are reported, never raised, and so is what the
    filter's private rules refuse: a private folder, or the agent's data directory, once as
    a folder (nothing below it is listed), a private file, a root that is private itself.
    """
    path_filter = path_filter or PathFilter()
    private = path_filter.private
    root = os.path.abspath(root)
    ignores = _GitIgnores() if gitignore else None
    try:
        st = os.stat(root)
    except OSError as e:
        yield WalkItem(root, f"cannot read folder: {e.strerror or e}")
        return
    why = private.reason(root, is_dir=True)   # inside the data directory, or ~/.ssh itself
    if why:
        yield WalkItem(root, why)
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
                        yield WalkItem(entry.path, private.matches(entry.path)
                                       or "symbolic link (not followed)")
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
                    why = private.reason(entry.path, is_dir=True) or (
                        OWN_DATA_DIR if private.own_key(target) else None)
                    if why:
                        yield WalkItem(entry.path, why)
                    elif key in ancestors:
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
                why = private.matches(entry.path, is_dir=True) or (
                    OWN_DATA_DIR if private.own_key(dst) else None)
                if why:                 # recorded once, for the folder: nothing below is read
                    yield WalkItem(entry.path, why)
                    continue
                key = (dst.st_dev, dst.st_ino)
                if key not in visited:  # a bind mount can show a folder twice
                    visited.add(key)
                    subdirs.append((entry.path, rel, ancestors | {key}))
                continue
            if not path_filter.accepts(rel) or (ignores and ignores.ignored(rel, False)):
                continue
            # a followed link may lead into a private folder: its target is checked too
            why = private.reason(entry.path) if is_link else private.matches(entry.path)
            yield WalkItem(entry.path, why)
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
