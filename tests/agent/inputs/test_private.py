"""Nothing private is learned (issue 26 #5, issue 27 #4): a home folder holding every kind of
credential and the agent's own data directory, crawled (`cllm crawl`) and watched (the file
monitor): no secret and no file of the data directory becomes a document, each refusal is
recorded with its reason; `--include` naming a pattern takes it back, a broad one does not;
key material is refused whatever the file is called."""
from __future__ import annotations

import json
import os
import queue

import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.file_monitor import FileMonitor
from agent.inputs.ingest import Ingestor
from agent.inputs.paths import (OWN_DATA_DIR, PRIVATE_PATTERNS, PathFilter, PrivateRules, file_uri,
                                walk_files)
from agent.inputs.text import key_material
from tests.agent.helpers import pump, rows, settle

QUIET = 0.3
# a private key as ssh-keygen writes it (the key data is made up: what counts is its form)
KEY = ("-----BEGIN OPENSSH PRIVATE KEY-----\n"
       "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
       "QyNTUxOQAAACDf2mVmYWtlIGtleSBkYXRhIGZvciBhIHRlc3Qgb2YgY2xsbQAAAJgAAAAA\n"
       "-----END OPENSSH PRIVATE KEY-----\n")

# a secret of every kind, each under the rule that refuses it, and what is recorded for it:
# a folder rule's folder once (nothing below it is listed), a file rule's file
SECRETS = {
    ".ssh/id_ed25519": (".ssh/", ".ssh"),
    ".ssh/config": (".ssh/", ".ssh"),
    ".gnupg/private-keys-v1.d/ring.txt": (".gnupg/", ".gnupg"),
    ".aws/credentials": (".aws/", ".aws"),
    ".config/gcloud/credentials.db": (".config/gcloud/", ".config/gcloud"),
    ".kube/config": (".kube/", ".kube"),
    ".docker/config.json": (".docker/config.json", ".docker/config.json"),
    ".netrc": (".netrc", ".netrc"),
    ".pgpass": (".pgpass", ".pgpass"),
    ".git-credentials": (".git-credentials", ".git-credentials"),
    ".npmrc": (".npmrc", ".npmrc"),
    ".pypirc": (".pypirc", ".pypirc"),
    "project/.env": (".env", "project/.env"),
    "project/.env.production": (".env.*", "project/.env.production"),
    "project/tls/server.pem": ("*.pem", "project/tls/server.pem"),
    "project/tls/server.key": ("*.key", "project/tls/server.key"),
    "project/tls/client.p12": ("*.p12", "project/tls/client.p12"),
    "project/tls/client.pfx": ("*.pfx", "project/tls/client.pfx"),
    "backup/id_rsa": ("id_rsa", "backup/id_rsa"),
    "backup/id_ecdsa": ("id_ecdsa", "backup/id_ecdsa"),
    "backup/id_dsa": ("id_dsa", "backup/id_dsa"),
    ".local/share/keyrings/login.keyring": (".local/share/keyrings/", ".local/share/keyrings"),
    "passwords.kdbx": ("*.kdbx", "passwords.kdbx"),
    "login.keychain": ("*.keychain", "login.keychain"),
    ".mozilla/firefox/abc.default/logins.json": (".mozilla/", ".mozilla"),
    ".config/google-chrome/Default/Login Data": (".config/google-chrome/", ".config/google-chrome"),
    ".config/chromium/Default/Cookies": (".config/chromium/", ".config/chromium"),
    "Library/Application Support/Google/Chrome/Default/Cookies":
        ("Library/Application Support/Google/Chrome/", "Library/Application Support/Google/Chrome"),
    "cllm.toml": ("cllm.toml", "cllm.toml"),
}
FINE = {"notes/herons.txt": "herons stand still in the shallows and wait for fish.\n" * 4,
        "backup/id_rsa.pub": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN0tAPublicKey me@host\n",
        ".config/nvim/init.lua": "vim.opt.number = true -- settings, not secrets\n" * 3}
DATA = ".local/share/cllm"      # the agent's data directory, where it sits by default


def make_home(home):
    """The home folder: SECRETS (text a model would happily learn), FINE files, and a data
    directory holding what an agent writes (a checkpoint's tokenizer, its settings)."""
    for rel in SECRETS:
        f = home / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(KEY if rel.endswith("id_ed25519") else f"password=hunter2 token for {rel}\n")
    for rel, text in FINE.items():
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text(text)
    data = home / DATA
    (data / "checkpoints").mkdir(parents=True)
    (data / "checkpoints" / "ckpt-000001.tokenizer.json").write_text(
        json.dumps({"merges": [[104, 101, 256]], "note": "what the agent itself wrote"}))
    (data / "checkpoints" / "committed.json").write_text('{"cycle_id": 1}')
    return data


def expected_refusals(home, data):
    """{uri: reason part} of every refusal the home folder must leave."""
    out = {file_uri(home / top): f"the private pattern {rule!r}" for rule, top in SECRETS.values()}
    out[file_uri(data)] = OWN_DATA_DIR
    return out


def check_home(store, home, data):
    got = rows(store)
    learned = {r["uri"] for r in got if r["status"] not in ("skipped", "deleted")}
    assert learned == {file_uri(home / rel) for rel in FINE}, sorted(learned)
    skipped = {r["uri"]: r["reason"] for r in got if r["status"] == "skipped"}
    for uri, why in expected_refusals(home, data).items():
        assert why in (skipped.get(uri) or ""), (uri, sorted(skipped.items()))
    assert set(skipped) == set(expected_refusals(home, data)), sorted(skipped)


# --- the rules --------------------------------------------------------------------------


def test_every_documented_pattern_refuses_its_kind_at_any_depth(tmp_path):
    rules = PrivateRules()
    for pattern, what in PRIVATE_PATTERNS:
        name = pattern.rstrip("/").replace("*", "x")
        is_dir = pattern.endswith("/")
        path = f"/home/me/deep/down/{name}" + ("/inside.txt" if is_dir else "")
        why = rules.reason(path)
        assert why and what in why and repr(pattern) in why, (pattern, why)
    for fine in ("/home/me/id_rsa.pub", "/home/me/.config/nvim/init.lua", "/home/me/env.txt",
                 "/home/me/keys.txt", "/home/me/.envelope/a.txt", "/home/me/notes/pem.md"):
        assert rules.reason(fine) is None, fine


def test_include_takes_a_pattern_back_only_by_naming_it(tmp_path):
    assert PrivateRules(["*", "**"]).taken_back == ()
    assert PrivateRules([".env*"]).taken_back == ()
    assert PrivateRules([".env"]).taken_back == (".env",)
    assert PrivateRules(["**/.ssh"]).taken_back == (".ssh/",)      # "**/" and "/" do not count
    rules = PrivateRules(["*", ".ssh/"])
    assert rules.reason("/h/.ssh/config") is None
    assert "'id_rsa'" in rules.reason("/h/.ssh/id_rsa")               # another rule still holds


def test_the_data_directory_is_never_read_wherever_it_sits_but_its_inbox(tmp_path):
    data = tmp_path / "w" / "data"
    (data / "checkpoints").mkdir(parents=True)
    link = tmp_path / "w" / "alias"
    os.symlink(data, link)
    rules = PrivateRules(own_dirs=[link])           # given through a link: resolved
    assert rules.reason(data / "checkpoints" / "ckpt-000001.tokenizer.json") == OWN_DATA_DIR
    assert rules.reason(link / "cllm.sqlite3") == OWN_DATA_DIR
    assert rules.reason(data / "inbox" / "dropped.txt") is None     # the inbox is an input
    assert rules.reason(tmp_path / "w" / "data2" / "x.txt") is None  # a name that only starts alike
    assert rules.own_rels(tmp_path / "w") == ("data",)
    assert rules.own_rels(data / "checkpoints") == (".",)
    assert rules.own_rels(data / "inbox") == ()


def test_key_material_is_refused_whatever_the_file_is_called(tmp_path, store):
    assert "OPENSSH PRIVATE KEY" in key_material("notes\n" + KEY)
    rsa = ("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,0A1B\n\n"
           "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi7ZYVwQhzGm1D6XJt4cmFLx8sB\n")
    assert "RSA PRIVATE KEY" in key_material(rsa)
    assert key_material("-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n" + "lQOYBF" * 10 + "\n")
    # documentation naming the format, and a public certificate, are no key material
    howto = "a key file starts with -----BEGIN OPENSSH PRIVATE KEY-----\n"
    assert key_material(howto) is None
    assert key_material("-----BEGIN CERTIFICATE-----\n" + "MIIB" * 16 + "\n") is None
    ing = Ingestor(store)
    (tmp_path / "notes.txt").write_text("my server key, keep it safe:\n" + KEY)
    (tmp_path / "howto.txt").write_text(howto)
    res = ing.ingest_file(tmp_path / "notes.txt")
    assert res.outcome == "refused" and res.reason.startswith("never learned: key material")
    assert ing.ingest_file(tmp_path / "howto.txt").outcome == "added"
    page = ing.ingest_text("https://example.org/leak", "pasted:\n" + KEY, source="example.org")
    assert page.outcome == "refused" and "OPENSSH PRIVATE KEY" in page.reason
    got = {r["uri"]: (r["status"], r["reason"]) for r in rows(store)}
    assert got[file_uri(tmp_path / "notes.txt")][0] == "skipped"
    assert got["https://example.org/leak"][0] == "skipped"


# --- the crawl ------------------------------------------------------------------------------


def crawl(data, *args):
    return CliRunner().invoke(main, ["crawl", "--data-dir", str(data), *args])


def open_data(data):
    from store import open_store
    return open_store(data)


def test_cllm_crawl_of_a_home_folder_learns_no_secret_and_records_each(tmp_path):
    home = tmp_path / "home"
    data = make_home(home)
    r = crawl(data, str(home), "--json")
    assert r.exit_code == 0, r.output
    store = open_data(data)
    try:
        check_home(store, home, data)
    finally:
        store.close()
    report = json.loads(r.output)
    shown = {i["uri"]: i["reason"] for i in report["items"] if i["outcome"] == "refused"}
    assert set(shown) == set(expected_refusals(home, data))          # listed as skipped too
    r = crawl(data, str(home))                                          # the text report says why
    assert "never read:" in r.output and "'.ssh/'" in r.output


def test_crawling_the_data_directory_or_a_private_folder_itself_reads_nothing(tmp_path):
    home = tmp_path / "home"
    data = make_home(home)
    r = crawl(data, str(data / "checkpoints"), str(home / ".ssh"), str(home / ".netrc"), "--json")
    assert r.exit_code == 1, r.output           # nothing stored: every target failed
    got = {i["uri"]: i["reason"] for i in json.loads(r.output)["items"]}
    ssh, netrc = file_uri(home / ".ssh"), file_uri(home / ".netrc")
    assert set(got) == {file_uri(data / "checkpoints"), ssh, netrc}
    assert got[file_uri(data / "checkpoints")] == OWN_DATA_DIR
    assert "'.ssh/'" in got[ssh] and "'.netrc'" in got[netrc]


def test_an_include_naming_a_pattern_takes_it_back_and_a_broad_one_does_not(tmp_path):
    home = tmp_path / "home"
    data = make_home(home)
    r = crawl(data, str(home), "--include", "*", "--json")
    assert r.exit_code == 0, r.output
    store = open_data(data)
    try:
        check_home(store, home, data)                    # "*" names no private pattern
    finally:
        store.close()
    r = crawl(data, str(home), "--include", "*", "--include", ".env", "--include", ".aws/",
              "--json")
    assert r.exit_code == 0, r.output
    store = open_data(data)
    try:
        live = {x["uri"]: x["status"] for x in rows(store) if x["status"] == "pending"}
    finally:
        store.close()
    assert file_uri(home / "project" / ".env") in live
    assert file_uri(home / ".aws" / "credentials") in live
    assert file_uri(home / "project" / ".env.production") not in live     # '.env.*' not named
    assert file_uri(home / ".ssh" / "config") not in live


def test_a_followed_link_into_a_private_folder_is_refused(tmp_path, store):
    home = tmp_path / "home"
    data = make_home(home)
    os.symlink(home / ".ssh", home / "notes" / "keys")
    os.symlink(home / ".aws" / "credentials", home / "notes" / "innocent.txt")
    os.symlink(data, home / "notes" / "agent")
    f = PathFilter(own_dirs=[data])
    got = {it.path: it.reason for it in walk_files(home / "notes", f, follow_symlinks=True)}
    assert "'.ssh/'" in got[str(home / "notes" / "keys")]
    assert "'.aws/'" in got[str(home / "notes" / "innocent.txt")]
    assert got[str(home / "notes" / "agent")] == OWN_DATA_DIR
    res = Ingestor(store, follow_symlinks=True).ingest_file(home / "notes" / "innocent.txt")
    assert res.outcome == "refused" and "'.aws/'" in res.reason      # the ingestor's own check


# --- the watcher ----------------------------------------------------------------------------


@pytest.fixture
def watched_home(tmp_path, store):
    home = tmp_path / "home"
    data = make_home(home)
    events: queue.Queue = queue.Queue()
    ingestor = Ingestor(store, private=PrivateRules(own_dirs=[data]))
    monitor = FileMonitor([home], events, quiet_period=QUIET, health_interval=0.2, own_dirs=[data])
    yield home, data, events, ingestor, monitor
    monitor.stop()


def test_the_watcher_learns_no_secret_and_records_each(watched_home, store):
    home, data, events, ingestor, monitor = watched_home
    monitor.start()
    seen: list = []
    pump(events, ingestor, lambda: any(k == "reconciled" for k, _, _ in seen), seen=seen)
    settle(events, ingestor, 2 * QUIET)
    check_home(store, home, data)
    before = {r["id"] for r in rows(store)}
    # while it watches: the agent writes its files, secrets change and appear
    (data / "checkpoints" / "ckpt-000002.tokenizer.json").write_text('{"merges": []}')
    (data / "checkpoints" / "live.json").write_text('{"step": 7}')
    (home / ".ssh" / "known_hosts").write_text("host ssh-ed25519 AAAA\n")
    (home / ".aws" / "credentials").write_text("aws_secret_access_key = changed\n")
    (home / "project" / "new.key").write_text("another private key\n")
    (home / ".kube").rename(home / "kube-moved")          # a private folder moved out ...
    (home / "notes" / "late.txt").write_text("a note written while watched\n")
    pump(events, ingestor, lambda: any(r["uri"] == file_uri(home / "notes" / "late.txt")
                                       for r in rows(store)), seen=seen)
    settle(events, ingestor, 2 * QUIET, seen=seen)
    got = rows(store)
    new = [r for r in got if r["id"] not in before]
    by_uri = {r["uri"]: r for r in new}
    assert "'*.key'" in by_uri[file_uri(home / "project" / "new.key")]["reason"]
    assert by_uri[file_uri(home / "notes" / "late.txt")]["status"] == "pending"
    # ... is no longer private: its files are read where they are now
    assert by_uri[file_uri(home / "kube-moved" / "config")]["status"] == "pending"
    assert {r["uri"] for r in new} == {file_uri(home / "project" / "new.key"),
                                       file_uri(home / "notes" / "late.txt"),
                                       file_uri(home / "kube-moved" / "config")}, new
    assert not [p for _, p, _ in seen if p.startswith(str(data) + os.sep)]   # never even seen
    live = [r["uri"] for r in got if r["status"] not in ("skipped", "deleted")]
    assert not [u for u in live if "/.ssh/" in u or "/.aws/" in u or DATA in u], live


def test_files_learned_inside_a_private_folder_before_are_retired_by_the_next_scan(
        watched_home, store):
    """Learned before the rules (an older agent, or --include '.ssh/' dropped since): the
    reconciliation scan marks those rows deleted, never to be trained or replayed again."""
    home, data, events, ingestor, monitor = watched_home
    before = Ingestor(store, private=PrivateRules([".ssh/"]))
    assert before.ingest_file(home / ".ssh" / "config").outcome == "added"
    assert Ingestor(store, private=PrivateRules()).ingest_file(
        data / "checkpoints" / "committed.json").outcome == "added"
    monitor.start()
    seen: list = []
    pump(events, ingestor, lambda: any(k == "reconciled" for k, _, _ in seen), seen=seen)
    got = {r["uri"]: (r["status"], r["reason"]) for r in rows(store)
           if r["uri"] in (file_uri(home / ".ssh" / "config"),
                           file_uri(data / "checkpoints" / "committed.json"))}
    assert got[file_uri(home / ".ssh" / "config")][0] == "deleted"
    assert "'.ssh/'" in got[file_uri(home / ".ssh" / "config")][1]
    assert got[file_uri(data / "checkpoints" / "committed.json")] == ("deleted", OWN_DATA_DIR)
