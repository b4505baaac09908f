"""Decoding, binary detection, file selection, the Ingestor's rules, and the crawl/history CLI."""
from __future__ import annotations

import codecs
import json
import logging
import os
from collections import Counter

import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.inputs.ingest import Ingestor, summarize
from agent.inputs.paths import PathFilter, file_uri, uri_to_path, walk_files
from agent.inputs.text import Refused, decode_text, read_file, sniff_binary
from store.documents import content_sha256
from tests.agent.helpers import page, rows

# --- decoding ---------------------------------------------------------------------------


@pytest.mark.parametrize("data,text,encoding", [
    (b"plain ascii\n", "plain ascii\n", "utf-8"),
    ("caf\u00e9 \u2603\n".encode(), "caf\u00e9 \u2603\n", "utf-8"),
    (codecs.BOM_UTF8 + b"with bom", "with bom", "utf-8"),
    ("utf sixteen \u00e9".encode("utf-16"), "utf sixteen \u00e9", "utf-16"),
    ("utf 32".encode("utf-32"), "utf 32", "utf-32"),
])
def test_decode_text(data, text, encoding):
    d = decode_text(data)
    assert (d.text, d.encoding) == (text, encoding)


def test_declared_and_fallback_encodings_are_recorded():
    latin = "cr\u00e8me br\u00fbl\u00e9e".encode("latin-1")
    with pytest.raises(Refused, match=r"invalid UTF-8 \(byte 0xe8 at offset 2\)"):
        decode_text(latin)
    assert decode_text(latin, declared="ISO-8859-1").encoding == "iso8859-1"
    assert decode_text(latin, fallback="cp1252").encoding == "cp1252"
    assert decode_text(latin, declared="no-such-charset", fallback="cp1252").text == "cr\u00e8me br\u00fbl\u00e9e"


@pytest.mark.parametrize("data,why", [
    (b"", "empty (no text)"), (b" \n\t\n", "empty (whitespace only)"),
    (b"GIF89a\x01\x00\x01\x00\x00\xff", "NUL byte at offset 7"),
    (bytes(range(1, 32)) * 4, "control bytes"),
    (codecs.BOM_UTF16_LE + "a\x00b".encode("utf-16-le"), "NUL character after decoding"),
])
def test_refused_bytes(data, why):
    with pytest.raises(Refused, match=why.replace("(", r"\(").replace(")", r"\)")):
        decode_text(data)


def test_sniff_binary_accepts_text_with_escapes_and_tabs():
    assert sniff_binary(b"\x1b[31mred\x1b[0m\tcolumn\r\n") is None


def test_content_hash_is_the_stores(tmp_path, store):
    import hashlib

    assert content_sha256("h\u00e9llo") == hashlib.sha256("h\u00e9llo".encode("utf-8")).hexdigest()
    (tmp_path / "f.txt").write_text("h\u00e9llo", encoding="utf-8")
    res = Ingestor(store).ingest_file(tmp_path / "f.txt")
    assert res.sha256 == content_sha256("h\u00e9llo") == rows(store)[0]["sha256"]


def test_read_file_refusals(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("x" * 100)
    with pytest.raises(Refused, match="too large"):
        read_file(big, max_bytes=10)
    with pytest.raises(Refused, match="vanished"):
        read_file(tmp_path / "missing.txt")
    os.symlink("self", tmp_path / "self")
    with pytest.raises(Refused, match="not followed"):
        read_file(tmp_path / "self")
    with pytest.raises(Refused, match="symlink loop"):
        read_file(tmp_path / "self", follow_symlinks=True)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(Refused, match="not a regular file"):  # and does not block
        read_file(tmp_path / "fifo")


def test_a_fifo_or_device_is_refused_before_it_is_opened(tmp_path, monkeypatch):
    """Opening is already an action on a device (a tape rewinds, a terminal becomes ours):
    the type is checked first, and neither the FIFO nor the device a followed link names
    is ever opened."""
    os.mkfifo(tmp_path / "pipe")
    os.symlink("/dev/zero", tmp_path / "zeros.txt")
    opened = []
    real_open = os.open

    def spy(path, flags, *a, **k):
        opened.append(os.path.basename(os.fspath(path)))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr("agent.inputs.text.os.open", spy)
    with pytest.raises(Refused, match="^not a regular file$"):
        read_file(tmp_path / "pipe")
    with pytest.raises(Refused, match="^not a regular file$"):
        read_file(tmp_path / "zeros.txt", follow_symlinks=True)
    with pytest.raises(Refused, match="^symbolic link \\(not followed\\)$"):
        read_file(tmp_path / "zeros.txt")
    assert not {"pipe", "zeros.txt", "zero"} & set(opened), opened


def test_a_folder_swapped_for_a_symlink_is_not_read_through(tmp_path):
    """Every folder between the root and the file is opened without following a link: a
    folder replaced by a link to another place after the file was found is refused."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    outside.mkdir()
    (outside / "notes.txt").write_text("a secret outside the root\n")
    (root / "a" / "b" / "notes.txt").write_text("words inside the root\n")
    assert read_file(root / "a" / "b" / "notes.txt", root=root) == b"words inside the root\n"
    (root / "a" / "b" / "notes.txt").unlink()
    (root / "a" / "b").rmdir()
    os.symlink(outside, root / "a" / "b")
    with pytest.raises(Refused, match=r"^the folder a/b on its path is a symbolic link now \(not followed\)$"):
        read_file(root / "a" / "b" / "notes.txt", root=root)
    os.rename(root / "a", tmp_path / "a-moved")
    os.symlink(tmp_path / "a-moved", root / "a")       # a link higher up
    with pytest.raises(Refused, match="the folder a on its path is a symbolic link now"):
        read_file(root / "a" / "b" / "notes.txt", root=root)
    # followed links are the user's choice (--follow-symlinks): read through, as before
    assert read_file(root / "a" / "b" / "notes.txt", root=root,
                     follow_symlinks=True) == b"a secret outside the root\n"
    with pytest.raises(Refused, match="not beneath its folder"):
        read_file(outside / "notes.txt", root=root)


# --- selection --------------------------------------------------------------------------


@pytest.mark.parametrize("rel,taken", [
    ("notes.txt", True), ("src/mod.py", True), ("a.swp", False), (".a.txt.swp", False),
    ("x~", False), ("dl.crdownload", False), (".git/HEAD", False), ("pkg/node_modules/x.js", False),
    ("build/lib/a.py", False), ("a/__pycache__/m.pyc", False), ("data/cllm.sqlite3-wal", False),
])
def test_default_excludes(rel, taken):
    assert PathFilter().accepts(rel) is taken


def test_walk_honours_gitignore_and_includes(tmp_path):
    files = ["keep.py", "notes.md", "app.log", "sub/keep.log", "sub/gen/out.py", "sub/x.py",
             "vendor/lib.py", ".git/config"]
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    (tmp_path / ".gitignore").write_text("*.log\nvendor/\n")
    (tmp_path / "sub" / ".gitignore").write_text("!keep.log\ngen/\n")
    got = {os.path.relpath(i.path, tmp_path) for i in walk_files(tmp_path, gitignore=True)}
    assert got == {".gitignore", "keep.py", "notes.md", "sub/.gitignore", "sub/keep.log", "sub/x.py"}
    got = {os.path.relpath(i.path, tmp_path)
           for i in walk_files(tmp_path, PathFilter(include=["*.py"]), gitignore=True)}
    assert got == {"keep.py", "sub/x.py"}


def test_walk_symlinks(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.txt").write_text("a")
    os.symlink(tmp_path / "real", tmp_path / "alias")
    os.symlink("..", tmp_path / "real" / "up")
    items = {os.path.relpath(i.path, tmp_path): i.reason for i in walk_files(tmp_path)}
    assert items == {"alias": "symbolic link (not followed)", "real/a.txt": None,
                     "real/up": "symbolic link (not followed)"}
    items = {os.path.relpath(i.path, tmp_path): i.reason for i in walk_files(tmp_path, follow_symlinks=True)}
    # the linked folder is walked once (under its own name), the link upward is a loop
    assert items["real/up"] == "symlink loop (points to a folder above it)"
    assert "alias/a.txt" not in items
    assert sum(1 for k, v in items.items() if k.endswith("a.txt") and v is None) == 1


# --- the ingestor's rules ---------------------------------------------------------------


def test_new_version_supersedes_pending_one_and_revert_restores(tmp_path, store):
    ing = Ingestor(store)
    f = tmp_path / "f.txt"
    f.write_text("one")
    assert ing.ingest_file(f).outcome == "added"
    assert ing.ingest_file(f).outcome == "unchanged"
    f.write_text("two")
    assert ing.ingest_file(f).outcome == "added"
    assert [r["status"] for r in rows(store)] == ["skipped", "pending"]
    f.write_text("one")
    assert ing.ingest_file(f).outcome == "restored"
    assert [r["status"] for r in rows(store)] == ["pending", "skipped"]


def test_deleting_the_original_hands_content_to_its_duplicate(tmp_path, store):
    ing = Ingestor(store)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("shared words")
    b.write_text("shared words")
    assert ing.ingest_file(a).outcome == "added"
    assert ing.ingest_file(b).outcome == "duplicate"
    a.unlink()
    ing.delete_path(a)
    live = [r for r in rows(store) if r["sha256"]]
    assert [(r["uri"], r["status"]) for r in live] == [(file_uri(b), "pending")]


def test_a_new_version_of_the_original_hands_its_old_content_to_its_duplicate(tmp_path, store):
    ing = Ingestor(store)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("shared words")
    b.write_text("shared words")
    first = ing.ingest_file(a)
    assert ing.ingest_file(b).outcome == "duplicate"
    a.write_text("a has its own words now")
    assert ing.ingest_file(a).outcome == "added"
    live = {r["uri"]: r for r in rows(store) if r["status"] not in ("deleted", "skipped")}
    assert set(live) == {file_uri(a), file_uri(b)}
    assert live[file_uri(b)]["id"] == first.document_id          # the old content, re-homed


def test_each_input_is_logged_at_debug_and_a_batch_is_summarized(tmp_path, store, caplog):
    """Issue 15: one INFO line per document (every unchanged file again at each start) is
    a summary per crawl or batch now; the per-input lines are DEBUG."""
    ing = Ingestor(store)
    for i in range(3):
        (tmp_path / f"{i}.txt").write_text(f"document number {i}")
    with caplog.at_level(logging.INFO, logger="agent.inputs.ingest"):
        got = [ing.ingest_file(tmp_path / f"{i}.txt").outcome for i in range(3)]
        got.append(ing.ingest_file(tmp_path / "0.txt").outcome)
    assert [r for r in caplog.records if r.name == "agent.inputs.ingest"] == []
    with caplog.at_level(logging.DEBUG, logger="agent.inputs.ingest"):
        ing.ingest_file(tmp_path / "1.txt")
    sha = content_sha256("document number 1")[:12]     # the line names the version
    assert [r.getMessage() for r in caplog.records if r.name == "agent.inputs.ingest"] == [
        f"unchanged: {file_uri(tmp_path / '1.txt')} (sha256 {sha}, 17 bytes)"]
    assert summarize(Counter(got)) == "3 added, 1 unchanged" and summarize({}) == "nothing"


def test_the_hand_over_follows_the_duplicate_link_not_the_reason_text(tmp_path, store):
    from store.models import Document

    ing = Ingestor(store)
    a, b, c = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    for f in (a, b, c):
        f.write_text("shared words")
    original = ing.ingest_file(a).document_id
    dup_b, dup_c = ing.ingest_file(b), ing.ingest_file(c)
    with store.session() as s:
        assert s.get(Document, dup_b.document_id).duplicate_of_id == original
        s.get(Document, dup_b.document_id).reason = "reworded by someone"
        s.get(Document, dup_c.document_id).duplicate_of_id = None  # no link: no heir
    a.unlink()
    ing.delete_path(a)
    live = [r for r in rows(store) if r["sha256"]]
    assert [(r["uri"], r["status"], r["reason"]) for r in live] == [
        (file_uri(b), "pending", f"content moved here from {file_uri(a)}")]


def test_reconcile_marks_only_files_that_are_gone(tmp_path, store):
    ing = Ingestor(store)
    for n in ("a", "b", "c"):
        (tmp_path / f"{n}.txt").write_text(n * 3)
        ing.ingest_file(tmp_path / f"{n}.txt")
    (tmp_path / "b.txt").unlink()
    # "c" was not seen by the scan (say, now excluded) but still exists: kept
    assert ing.reconcile(tmp_path, [str(tmp_path / "a.txt")]) == 1
    assert {r["uri"].rsplit("/", 1)[1]: r["status"] for r in rows(store)} == {
        "a.txt": "pending", "b.txt": "deleted", "c.txt": "pending"}


def test_refusal_is_not_recorded_twice(tmp_path, store):
    ing = Ingestor(store)
    f = tmp_path / "x.bin"
    f.write_bytes(b"\x00\x01")
    ing.ingest_file(f)
    ing.ingest_file(f)
    assert len(rows(store)) == 1


def test_unknown_fallback_encoding_is_a_config_error(store):
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown fallback encoding"):
        Ingestor(store, fallback_encoding="klingon-8")


# --- the CLI ----------------------------------------------------------------------------


def test_cli_crawl_folder_and_history_documents(tmp_path, monkeypatch):
    monkeypatch.delenv("CLLM_DATABASE_URL", raising=False)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("alpha text\n")
    (src / "b.bin").write_bytes(b"\x00\x01\x02")
    data = tmp_path / "data"
    runner = CliRunner()
    res = runner.invoke(main, ["crawl", str(src), "--data-dir", str(data)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "added 1" in res.output and "refused 1" in res.output
    res = runner.invoke(main, ["history", "documents", "--data-dir", str(data), "--json"],
                        catch_exceptions=False)
    docs = json.loads(res.output)
    assert {"uri", "status", "sha256", "cycle_id", "reason"} <= set(docs[0])
    by_name = {d["uri"].rsplit("/", 1)[1]: d for d in docs}
    assert by_name["a.txt"]["status"] == "pending" and len(by_name["a.txt"]["sha256"]) == 64
    assert by_name["b.bin"]["status"] == "skipped" and "binary" in by_name["b.bin"]["reason"]
    res = runner.invoke(main, ["history", "documents", "--data-dir", str(data), "--status", "pending", "--json"])
    assert [d["uri"] for d in json.loads(res.output)] == [by_name["a.txt"]["uri"]]


def test_cli_crawl_url_and_private_host_flag(tmp_path, site, monkeypatch):
    monkeypatch.delenv("CLLM_DATABASE_URL", raising=False)
    site.html("/", page("Home", "home page words", ("/next",)))
    site.html("/next", page("Next", "next page words"))
    data = str(tmp_path / "data")
    runner = CliRunner()
    res = runner.invoke(main, ["crawl", site.base + "/", "--data-dir", data, "--delay", "0", "--json"],
                        catch_exceptions=False)
    assert res.exit_code == 1  # its only target was refused: every target failed
    assert json.loads(res.output)["targets"][0]["counts"] == {"refused": 1}
    assert site.hits == []
    res = runner.invoke(main, ["crawl", site.base + "/", "--data-dir", data, "--delay", "0",
                               "--max-pages", "1", "--allow-private-hosts"], catch_exceptions=False)
    assert res.exit_code == 0 and "fetched 1" in res.output
    assert site.count("/next") == 0


def test_cli_bad_target_is_a_one_line_error(tmp_path):
    res = CliRunner().invoke(main, ["crawl", str(tmp_path / "nope"), "--data-dir", str(tmp_path / "d")])
    assert res.exit_code == 2
    assert "neither an existing folder or file nor an http(s) URL" in res.output


def test_cli_help_has_examples():
    for args in (["crawl", "-h"], ["history", "-h"], ["history", "documents", "-h"]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0 and "Example:" in res.output


def test_history_urls_lists_refused_urls_with_their_reason(tmp_path):
    """An SSRF refusal is no document, but it is recorded, and `cllm history urls` shows it."""
    from click.testing import CliRunner

    data = str(tmp_path / "data")
    r = CliRunner().invoke(main, ["crawl", "http://127.0.0.1:9/", "--data-dir", data])
    assert r.exit_code == 1, r.output  # its only target was refused: every target failed
    r = CliRunner().invoke(main, ["history", "urls", "--data-dir", data, "--json"])
    rows = json.loads(r.output)
    assert [(u["url"], u["status"]) for u in rows] == [("http://127.0.0.1:9/", "refused")]
    assert "loopback" in rows[0]["reason"] and "--allow-private-hosts" in rows[0]["reason"]
    table = CliRunner().invoke(main, ["history", "urls", "--data-dir", data]).output
    assert "1 URLs" in table and "SSRF guard" in table
    missing = CliRunner().invoke(main, ["history", "urls", "--data-dir", str(tmp_path / "x")])
    assert missing.exit_code == 1 and "no store in" in missing.output


# --- bad input is a recorded refusal, never a crash -------------------------------------


@pytest.mark.parametrize("codec", ["base64", "hex", "rot13", "zlib", "uu", "bz2", "quopri", "nul\x00",
                                   "\udcff"])
def test_non_text_codecs_are_never_used(codec):
    assert decode_text(b"plain words\n", declared=codec).encoding == "utf-8"
    latin = "cr\u00e8me br\u00fbl\u00e9e".encode("latin-1")
    with pytest.raises(Refused, match="no usable declared or fallback encoding"):
        decode_text(latin, declared=codec, fallback=codec)


def test_a_codec_failing_oddly_falls_through_to_utf8():
    assert decode_text(b"xn--a- words", declared="idna") == decode_text(b"xn--a- words")


@pytest.mark.parametrize("data,declared", [(b"a lone +2AA- surrogate", "utf-7"),
                                           (b"an escaped \\ud800 surrogate", "unicode_escape")])
def test_decoded_lone_surrogates_are_refused(data, declared):
    with pytest.raises(Refused, match=r"lone surrogate \(U\+D800 at character \d+\).*decoded as"):
        decode_text(data, declared=declared)


@pytest.mark.parametrize("codec", ["rot13", "base64", "zlib"])
def test_a_non_text_fallback_encoding_is_a_config_error(store, codec):
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="is not a text encoding"):
        Ingestor(store, fallback_encoding=codec)
    res = CliRunner().invoke(main, ["crawl", ".", "--fallback-encoding", codec, "--data-dir", "unused"])
    assert res.exit_code == 2 and "not a text encoding" in res.output


def test_ingestor_refuses_text_utf8_cannot_hold(tmp_path, store):
    ing = Ingestor(store, fallback_encoding="unicode_escape")
    f = tmp_path / "esc.txt"
    f.write_bytes(b"caf\xe9 \\ud800 words\n")  # not UTF-8: the fallback makes a lone surrogate
    res = ing.ingest_file(f)
    assert res.outcome == "refused" and "lone surrogate" in res.reason
    res = ing.ingest_text("https://example.com/x", "text with \udcff in it", source="example.com")
    assert res.outcome == "refused" and "lone surrogate" in res.reason
    res = ing.ingest_text("https://example.com/y", "text with a NUL \x00 in it", source="example.com")
    assert res.outcome == "refused" and "NUL" in res.reason
    assert [r["status"] for r in rows(store)] == ["skipped"] * 3


def test_file_uri_round_trips_names_that_are_not_utf8(tmp_path):
    raw = os.fsencode(str(tmp_path)) + b"/bad\xff.txt"
    uri = file_uri(raw)
    assert uri.endswith("/bad%FF.txt") and file_uri(os.fsdecode(raw)) == uri
    assert os.fsencode(uri_to_path(uri)) == raw


def test_reconcile_deletes_rows_of_files_with_names_that_are_not_utf8(tmp_path, store):
    ing = Ingestor(store)
    name = os.fsdecode(b"bad\xff.txt")
    (tmp_path / name).write_text("words in a file with a latin-1 name\n")
    (tmp_path / "good.txt").write_text("words in a file with a plain name\n")
    assert ing.ingest_file(tmp_path / name).outcome == "added"
    ing.ingest_file(tmp_path / "good.txt")
    (tmp_path / name).unlink()  # deleted while the agent was down
    assert ing.reconcile(tmp_path, [str(tmp_path / "good.txt")]) == 1
    assert {r["uri"].rsplit("/", 1)[1]: r["status"] for r in rows(store)} == {
        "bad%FF.txt": "deleted", "good.txt": "pending"}


def test_files_in_folders_with_names_that_are_not_utf8(tmp_path, store):
    folder = tmp_path / os.fsdecode(b"dir\xfe")
    folder.mkdir()
    (folder / "a.txt").write_text("words in a folder with a latin-1 name\n")
    (folder / "b.bin").write_bytes(b"\x00\x01")
    ing = Ingestor(store)
    assert ing.ingest_file(folder / "a.txt").outcome == "added"  # source: the folder, made storable
    assert ing.ingest_file(folder / "b.bin").outcome == "refused"
    assert {r["source"] for r in rows(store)} == {str(tmp_path) + "/dir\ufffd"}
    assert all("/dir%FE/" in r["uri"] for r in rows(store))


def test_walk_checks_the_stop_event_for_every_entry(tmp_path):
    import threading

    for i in range(50):
        (tmp_path / f"f{i:02d}.txt").write_text(str(i))
    stop = threading.Event()
    got = []
    for item in walk_files(tmp_path, stop_event=stop):
        got.append(item)
        if len(got) == 3:
            stop.set()
    assert [os.path.basename(i.path) for i in got] == ["f00.txt", "f01.txt", "f02.txt"]


def _cli_crawl_interrupted(tmp_path, monkeypatch, sigints: int):
    """`cllm crawl` of a folder of 20 files with Ctrl-C pressed `sigints` times at the third."""
    import signal

    monkeypatch.delenv("CLLM_DATABASE_URL", raising=False)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i:02d}.txt").write_text(f"file number {i}\n")
    calls = []
    real = Ingestor.ingest_file

    def ingest_file(self, path, **kw):
        calls.append(path)
        if len(calls) == 3:
            for _ in range(sigints):
                signal.raise_signal(signal.SIGINT)
        return real(self, path, **kw)

    monkeypatch.setattr(Ingestor, "ingest_file", ingest_file)
    before = signal.getsignal(signal.SIGINT)
    data = str(tmp_path / "data")
    res = CliRunner().invoke(main, ["crawl", str(src), "--data-dir", data], catch_exceptions=False)
    assert signal.getsignal(signal.SIGINT) is before  # the CLI's handler is gone again
    monkeypatch.undo()
    docs = json.loads(CliRunner().invoke(main, ["history", "documents", "--data-dir", data, "--json"]).output)
    return res, docs, calls


def test_cli_crawl_ctrl_c_keeps_what_was_stored(tmp_path, monkeypatch):
    res, docs, calls = _cli_crawl_interrupted(tmp_path, monkeypatch, sigints=1)
    assert res.exit_code == 0, res.output
    assert "interrupted: everything stored before the interrupt is kept" in res.output
    assert len(calls) == 3 and len(docs) == 3  # the walk stopped after the current file, and committed it
    assert "interrupted 1" in res.output


def test_cli_crawl_second_ctrl_c_says_what_is_lost(tmp_path, monkeypatch):
    res, docs, _ = _cli_crawl_interrupted(tmp_path, monkeypatch, sigints=2)
    assert res.exit_code == 0, res.output
    assert "were rolled back" in res.output and "at most 200" in res.output
    assert docs == []  # exactly as said: the walk's open transaction held them all
