"""The fetcher's time limits and conditional requests, against servers on 127.0.0.1."""
from __future__ import annotations

from tests.agent.helpers import DripServer
from tests.agent.test_crawler import crawler, urls


def test_a_server_that_drips_its_headers_is_cut_off_by_the_total_deadline(store):
    """A status line, then a header line every 50 ms: no single read times out, but the
    request's one budget (3 x timeout, all attempts together) does."""
    with DripServer(interval=0.05, max_lines=400) as srv:
        with crawler(store, timeout=0.2, retries=3) as c:
            report = c.crawl(srv.base + "/slow.txt")
        lines, connections = srv.lines, srv.connections
    status, _, reason = urls(store)[srv.base + "/slow.txt"]
    assert report.counts["failed"] == 1 and status == "failed"
    assert "timed out" in reason and "total time limit ran out" in reason and "was spent" in reason
    # the budget is spent by the first attempt: no retry, and the drip was cut off early
    # (the whole drip is 400 lines; without the deadline the fetch would have read them all)
    assert connections == 1 and lines < 400


def test_https_through_the_guarded_transport(tmp_path):
    """TLS goes through our network stream (start_tls): a certificate the client trusts
    gives the page, an untrusted one is a connect error, never a crash."""
    import http.server
    import shutil
    import ssl
    import subprocess
    import threading

    import httpx
    import pytest

    from agent.web.ssrf import HostPolicy
    from agent.web.transport import guarded_transport

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"secret words over TLS\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    server.socket = server_ctx.wrap_socket(server.socket, server_side=True)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    t.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/"
        policy = HostPolicy.build(allow_networks=["127.0.0.1/32"])
        trusting = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(transport=guarded_transport(policy, trusting)) as client:
            r = client.get(url)
            assert (r.status_code, r.text) == (200, "secret words over TLS\n")
            assert client.get(url).status_code == 200  # the pooled connection is reused
        with httpx.Client(transport=guarded_transport(policy)) as client:
            with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
                client.get(url)
    finally:
        server.shutdown()
        server.server_close()
        t.join()
