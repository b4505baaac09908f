"""The security campaign (issue 26), a sibling of fault_campaign.py: each hole the review
found, replayed against a real `cllm crawl`, `cllm agent` or `cllm serve` on loopback, with
the outcome judged from outside (exit status, peak memory, the store, HTTP answers):

  crawler  decompression bombs (gzip, `gzip, gzip`, behind a redirect, as robots.txt), a
           page of 100,000 links, a FIFO in a crawled folder;
  files    a watched folder swapped for a symbolic link to an outside folder during the
           quiet period; secrets and the data directory inside a watched folder;
  server   another local port's origin, text/plain posts, no credential on loopback, slow
           header drips, oversized and deeply nested bodies, many waiting completions, an
           /api/bench too large for the machine. (A streaming client that stops reading is
           tests/agent/server/test_connections.py's: the campaign's tiny model ends its
           generations before loopback's socket buffers fill.)

    python benchmarks/fault_campaign_security.py                  # every group
    python benchmarks/fault_campaign_security.py --only server --out results.md

It prints fault_campaign's table (trials, passed, failures with the command that reproduces
each) and exits 1 if any trial failed.
"""
from __future__ import annotations

import argparse
import gzip
import http.server
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.fault_campaign import Campaign, Proc, report  # noqa: E402

BOMB_MB = 1024            # what one bomb decodes to
RSS_LIMIT_MB = 600        # a crawl that decoded a bomb would pass this many times over


# ---------------------------------------------------------------------------- helpers

def run_measured(args: list[str], timeout: float = 300) -> tuple[int, float, str, str]:
    """(exit status, peak RSS in MB, stdout, stderr) of `python -m agent ARGS`."""
    import subprocess
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "agent", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    out: dict[str, str] = {}
    readers = [threading.Thread(target=lambda k, f: out.__setitem__(k, f.read()), args=(k, f))
               for k, f in (("out", p.stdout), ("err", p.stderr))]
    for t in readers:
        t.start()
    deadline = time.monotonic() + timeout
    while True:                         # os.wait4 gives this child's own peak RSS
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            p.kill()
        time.sleep(0.05)
    p.returncode = os.waitstatus_to_exitcode(status)
    for t in readers:
        t.join()
    return p.returncode, ru.ru_maxrss / 1024, out.get("out", ""), out.get("err", "")


def query(data: Path, sql: str) -> list[tuple]:
    """Rows of a read-only query on a data directory's SQLite store ([] without one)."""
    db = data / "cllm.sqlite3"
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def documents(data: Path) -> list[tuple[str, str, str]]:
    """(uri, status, text) of every document the store holds."""
    return [(u, s, t or "") for u, s, t in query(data, "SELECT uri, status, text FROM documents")]


def gzip_of_zeros(mb: int, layers: int = 1) -> bytes:
    """`mb` MiB of zeros gzipped `layers` times (a bomb: about a thousandth of its size)."""
    c = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    chunk = b"\0" * (1 << 20)
    body = b"".join(c.compress(chunk) for _ in range(mb)) + c.flush()
    for _ in range(layers - 1):
        body = gzip.compress(body, 9)
    return body


class Site:
    """A loopback HTTP server answering from a dict path -> (status, headers, body)."""

    def __init__(self, routes: dict[str, tuple[int, dict, bytes]]) -> None:
        routes = dict(routes)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                status, headers, body = routes.get(self.path, (404, {}, b"not found"))
                self.send_response(status)
                for k, v in {"Content-Type": "text/html", **headers}.items():
                    self.send_header(k, v.replace("{port}", str(site.port)))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

            def log_message(self, *a):
                pass

        site = self
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


# ---------------------------------------------------------------------------- crawler

def crawler_trials(c: Campaign) -> None:
    one = gzip_of_zeros(BOMB_MB)
    two = gzip_of_zeros(BOMB_MB, layers=2)
    page = b"<html><body><p>a page of text about lattices and primes.</p></body></html>"
    gz = {"Content-Encoding": "gzip"}
    cases = {
        "gzip bomb": ({"/": (200, gz, one)}, "/"),
        "gzip, gzip bomb": ({"/": (200, {"Content-Encoding": "gzip, gzip"}, two)}, "/"),
        "bomb behind a redirect": ({"/": (302, {"Location": "{base}/b"}, b""),
                                    "/b": (200, gz, one)}, "/"),
        "robots.txt bomb": ({"/robots.txt": (200, {**gz, "Content-Type": "text/plain"},
                                             gzip_of_zeros(BOMB_MB // 4)),
                             "/": (200, {}, page)}, "/"),
    }
    for name, (routes, start) in cases.items():
        data = c.work / f"crawl-{len(c.trials):03d}"
        site = Site({p: (s, {k: v.replace("{base}", "http://127.0.0.1:{port}")
                             for k, v in h.items()}, b) for p, (s, h, b) in routes.items()})
        try:
            rc, rss, out, err = run_measured(
                ["crawl", site.url + start, "--data-dir", str(data), "--allow-private-hosts",
                 "--delay", "0", "--retries", "0", "--json", "-q"])
        finally:
            site.close()
        problems = []
        if rss > RSS_LIMIT_MB:
            problems.append(f"peak RSS {rss:.0f} MB")
        try:
            items = json.loads(out)["items"]
        except (ValueError, KeyError):
            items, problems = [], problems + [f"no JSON report (exit {rc}): {err.strip()[-200:]}"]
        learned = [d for d in documents(data) if d[2] and "\0" in d[2]]
        if learned:
            problems.append("a bomb's zeros were stored")
        reasons = "; ".join(f"{i['outcome']}: {i['reason']}" for i in items if i.get("reason"))
        if name != "robots.txt bomb" and not reasons:
            problems.append("no refusal recorded")
        c.record("crawler", name, problems,
                 "python benchmarks/fault_campaign_security.py --only crawler",
                 f"peak RSS {rss:.0f} MB; {reasons[:160]}")
        shutil.rmtree(data, ignore_errors=True)

    # a page of 100,000 links: the frontier takes --max-links of them
    links = "".join(f'<a href="/p{i}">p{i}</a>' for i in range(100_000)).encode()
    site = Site({"/": (200, {}, b"<html><body><p>many links</p>" + links + b"</body></html>")})
    data = c.work / "crawl-links"
    try:
        rc, rss, out, err = run_measured(
            ["crawl", site.url + "/", "--data-dir", str(data), "--allow-private-hosts",
             "--delay", "0", "--max-depth", "1", "--max-pages", "1", "--json", "-q"])
    finally:
        site.close()
    problems = [] if rc == 0 else [f"exit {rc}: {err.strip()[-200:]}"]
    n = (query(data, "SELECT count(*) FROM fetched_urls") or [(0,)])[0][0]
    if not 1 < n <= 1001:
        problems.append(f"{n} URL rows from one page")
    c.record("crawler", "100,000 links on one page", problems,
             "python benchmarks/fault_campaign_security.py --only crawler",
             f"{n} URL rows, peak RSS {rss:.0f} MB")

    # a FIFO in a crawled folder: refused without blocking the walk
    folder = c.work / "fifo-folder"
    folder.mkdir()
    (folder / "note.txt").write_text("a note about the crystal lattice. " * 20)
    os.mkfifo(folder / "pipe.txt")
    data = c.work / "crawl-fifo"
    rc, rss, out, err = run_measured(["crawl", str(folder), "--data-dir", str(data), "--json",
                                      "-q"], timeout=60)
    problems = [] if rc == 0 else [f"exit {rc}: {err.strip()[-200:]}"]
    uris = {d[0].rsplit("/", 1)[-1]: d[1] for d in documents(data)}
    if "note.txt" not in uris:
        problems.append("the regular file was not stored")
    if uris.get("pipe.txt") not in (None, "skipped", "failed"):
        problems.append(f"the FIFO was stored as {uris.get('pipe.txt')}")
    c.record("crawler", "a FIFO in a crawled folder", problems,
             "python benchmarks/fault_campaign_security.py --only crawler", f"exit {rc}")


# ---------------------------------------------------------------------------- files

SECRETS = {
    ".ssh/id_ed25519": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n"
                       "-----END OPENSSH PRIVATE KEY-----\n",
    ".aws/credentials": "[default]\naws_secret_access_key = SECRETAWSKEY1234\n",
    ".env": "DATABASE_PASSWORD=SECRETENVPASSWORD\n",
    ".netrc": "machine example.org login me password SECRETNETRC\n",
    ".pgpass": "localhost:5432:*:me:SECRETPGPASS\n",
    "certs/server.pem": "-----BEGIN PRIVATE KEY-----\nMIIEvQ\n-----END PRIVATE KEY-----\n",
    "certs/server.key": "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----\n",
    ".gnupg/private.key": "SECRETGPG\n",
    ".kube/config": "token: SECRETKUBE\n",
    ".docker/config.json": '{"auths": {"x": {"auth": "SECRETDOCKER"}}}\n',
    ".git-credentials": "https://me:SECRETGIT@example.org\n",
    "notes/keys.txt": "my key\n-----BEGIN OPENSSH PRIVATE KEY-----\n"
                      + ("b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
                         * 6) + "-----END OPENSSH PRIVATE KEY-----\n",
}


def files_trials(c: Campaign, swaps: int) -> None:
    # secrets and the data directory inside a watched home folder
    home = c.work / "home"
    for rel, text in SECRETS.items():
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text(text)
    (home / "project").mkdir()
    (home / "project" / "readme.txt").write_text("the project learns about primes. " * 40)
    data = home / "cllm-data"
    p = Proc(["agent", "--data-dir", str(data), "--watch", str(home), "--preset", "tiny",
              "--workers", "1", "--min-cycle-tokens", "50", "--max-wait", "2",
              "--quiet-period", "0.2", "--batch-size", "4", "--cycle-seconds", "3",
              "--keep-learning", "on"])
    try:
        seen = p.wait_for(r"cycle \d+ completed", timeout=180)
        if seen is not None:
            p.wait_for(r"cycle \d+ completed", timeout=60)   # a second: its files exist now
    except TimeoutError as e:
        seen = None
        err = str(e)
    p.finish(sig=15)
    docs = documents(data)
    problems = [] if seen else [f"no cycle completed: {p.text()[-300:] or err}"]
    leaked = [u for u, s, t in docs if "SECRET" in t or "PRIVATE KEY" in t]
    own = [u for u, s, t in docs if "/cllm-data/" in u and s not in ("skipped", "failed")]
    problems += [f"learned {u}" for u in leaked + own]
    if not any(u.endswith("readme.txt") for u, *_ in docs):
        problems.append("the project file was not learned")
    c.record("files", "secrets and the data directory in a watched home", problems,
             "python benchmarks/fault_campaign_security.py --only files",
             f"{len(docs)} documents, none secret")

    # a folder swapped for a link to an outside folder during the quiet period
    watch, outside = c.work / "swap-watch", c.work / "swap-outside"
    outside.mkdir()
    watch.mkdir()
    data = c.work / "swap-data"
    p = Proc(["agent", "--data-dir", str(data), "--watch", str(watch), "--preset", "tiny",
              "--workers", "1", "--min-cycle-tokens", "100000", "--max-wait", "3600",
              "--quiet-period", "1.0"])
    try:
        p.wait_for(r"agent running", timeout=120)
        for i in range(swaps):
            sub = watch / f"sub{i}"
            sub.mkdir()
            (sub / "f.txt").write_text(f"harmless text number {i}. " * 10)
            (outside / "f.txt").write_text(f"OUTSIDE SECRET {i}. " * 10)
            time.sleep(0.3)             # inside the 1 s quiet period: the swap
            shutil.rmtree(sub)
            os.symlink(outside, sub)
        time.sleep(3.0)                 # past the quiet period of the last one
    finally:
        p.finish(sig=15)
    leaked = [u for u, s, t in documents(data) if "OUTSIDE SECRET" in t]
    c.record("files", f"folder swapped for a link in the quiet period (x{swaps})",
             [f"read outside the root: {u}" for u in leaked],
             "python benchmarks/fault_campaign_security.py --only files",
             f"{len(documents(data))} documents, none from outside")


# ---------------------------------------------------------------------------- server

def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_head(port: int, head: bytes, read: bool = True, timeout: float = 10.0) -> bytes:
    """Send `head` on a new connection to the server; its answer (b"" if it closed)."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head)
        if not read:
            return b""
        try:
            return s.recv(65536)
        except OSError:
            return b""


def code_of(request) -> int | str:
    """The status of `request()`, or the name of the error it raised."""
    import httpx
    try:
        return request().status_code
    except httpx.HTTPError as e:
        return type(e).__name__


def server_trials(c: Campaign) -> None:
    import socket

    import httpx
    data, corpus = c.work / "serve-data", c.work / "serve-corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("the crystal lattice hums a quiet tune over the primes. " * 80)
    from benchmarks.fault_campaign import cllm
    r = cllm("train", str(corpus), "--data-dir", str(data), "--preset", "tiny", "--steps", "20",
             "--workers", "1", "--batch-size", "4")
    if r.returncode != 0:
        c.record("server", "set-up", [f"cllm train failed: {r.stderr[-300:]}"])
        return
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    p = Proc(["serve", "--data-dir", str(data), "--port", str(port), "--concurrency", "1",
              "--queue-timeout", "60", "--max-tokens", "4096"])
    repro = "python benchmarks/fault_campaign_security.py --only server"
    try:
        p.wait_for(r"Uvicorn running|serving|listening", timeout=120)
        token_file = data / "cllm.token"
        token = token_file.read_text().strip() if token_file.exists() else ""
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        http = httpx.Client(base_url=base, timeout=30)

        def watch_roots() -> list[str]:
            got = http.get("/api/targets", headers=auth)
            return [t.get("location") for t in got.json()] if got.status_code == 200 else []

        # another local port's page, with the user's cookie, posting text/plain
        evil = {"Origin": f"http://127.0.0.1:{port + 1}", "Content-Type": "text/plain",
                "Sec-Fetch-Site": "same-site", "Cookie": f"cllm_token_{port}={token}"}
        r = http.post("/api/targets", content=b'{"kind": "watch", "location": "/"}',
                      headers=evil)
        problems = [f"answered {r.status_code}"] if r.status_code < 400 else []
        problems += ["/ became a watch root"] if "/" in watch_roots() else []
        c.record("server", "another port's page adds / as a watch root", problems, repro,
                 f"{r.status_code}")
        r = http.post("/api/targets", content=b'{"kind": "watch", "location": "/"}',
                      headers={**auth, "Content-Type": "text/plain"})
        c.record("server", "text/plain state change", [f"answered {r.status_code}"]
                 if r.status_code < 400 else [], repro, f"{r.status_code}")
        r = http.post("/api/training", json={"paused": True})
        r2 = http.get("/api/documents")
        c.record("server", "no credential on loopback",
                 [f"{u} answered {x.status_code}" for u, x in (("POST /api/training", r),
                                                              ("GET /api/documents", r2))
                  if x.status_code != 401], repro, f"{r.status_code}, {r2.status_code}")

        # slow header drips: many connections that never finish their head
        drips = []
        for _ in range(64):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                drips.append(s)
            except OSError:
                break
        t0 = time.monotonic()
        try:
            ok = http.get("/api/status", headers=auth, timeout=10).status_code == 200
        except httpx.HTTPError:
            ok = False
        took = time.monotonic() - t0
        for s in drips:
            s.close()
        c.record("server", f"{len(drips)} slow-drip heads", [] if ok else ["a normal request "
                 "was not answered"], repro, f"answered in {took:.2f} s")

        # oversized and deeply nested bodies
        big = b'{"prompt": "' + b"a" * (64 << 20) + b'"}'
        nested = b"[" * 200_000 + b"]" * 200_000
        js = {**auth, "Content-Type": "application/json"}
        codes = [code_of(lambda: http.post("/v1/completions", content=big, headers=js)),
                 code_of(lambda: http.post("/v1/completions", content=nested, headers=js)),
                 code_of(lambda: http.post("/api/generate", headers=auth, json={
                     "model": "cllm", "prompt": "a", "options": {"num_predict": "5"}}))]
        problems = [f"{n}: {x}" for n, x in zip(("64 MB body", "nested", "num_predict '5'"),
                                                codes)
                    if not (isinstance(x, int) and 400 <= x < 500)]
        alive = code_of(lambda: http.get("/health")) == 200
        c.record("server", "oversized, nested and mistyped bodies",
                 problems + ([] if alive else ["the server died"]), repro,
                 ", ".join(map(str, codes)))

        # many waiting completions (one slot) while the store routes answer
        import concurrent.futures as cf
        body = {"prompt": "the crystal", "max_tokens": 256}
        with cf.ThreadPoolExecutor(60) as ex:
            futs = [ex.submit(http.post, "/v1/completions", json=body, headers=auth,
                              timeout=120) for _ in range(60)]
            time.sleep(1.0)
            t0 = time.monotonic()
            st = http.get("/api/targets", headers=auth, timeout=10).status_code
            took = time.monotonic() - t0
            codes = []
            for f in futs:
                try:
                    codes.append(f.result().status_code)
                except httpx.HTTPError as e:
                    codes.append(type(e).__name__)
        bad = [x for x in codes if not isinstance(x, int) or x >= 500]
        c.record("server", "60 waiting completions", ([f"store route {st}"] if st != 200 else [])
                 + ([f"{len(bad)} answered 5xx"] if bad else []), repro,
                 f"store route in {took:.2f} s; completions {sorted(set(map(str, codes)))}")

        # a benchmark too large for the machine
        code = code_of(lambda: http.post("/api/bench", headers=auth, timeout=30, json={
            "preset": "base", "workers": [64] * 8}))
        alive = code_of(lambda: http.get("/health")) == 200
        c.record("server", "/api/bench of 8 x 64 workers of base",
                 ([f"answered {code}"] if not (isinstance(code, int) and 400 <= code < 500)
                  else []) + ([] if alive else ["the server died"]), repro, f"{code}")
    finally:
        p.finish(sig=15)


# ---------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="crawler,files,server")
    ap.add_argument("--swaps", type=int, default=10, help="symlink swaps in the files group")
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    ap.add_argument("--keep", action="store_true", help="keep the trial directories")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cllm-security-"))
    c = Campaign(work)
    t0 = time.monotonic()
    only = set(a.only.split(","))
    try:
        if "crawler" in only:
            print("crawler: bombs, links, FIFOs", flush=True)
            crawler_trials(c)
        if "files" in only:
            print("files: secrets, the data directory, symlink swaps", flush=True)
            files_trials(c, a.swaps)
        if "server" in only:
            print("server: origins, credentials, slow and greedy clients", flush=True)
            server_trials(c)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(c, "security campaign", t0, a.out)


if __name__ == "__main__":
    main()
