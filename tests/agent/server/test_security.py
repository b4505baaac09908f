"""The rules of a local server against a real one (uvicorn on loopback, httpx): the Host
header (DNS rebinding); where state-changing requests may come from (the whole Origin,
Sec-Fetch-Site) and what they must send (JSON); the token, required on loopback too, kept
in the data directory with mode 0600; the dashboard's link, which sets a per-port cookie
and leaves the address bar; the headers of every response; TLS; what a 500
and /v1/models may say."""
from __future__ import annotations

import logging
import os
import ssl
import stat
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from agent import reports
from agent.server.config import ServeConfig
from agent.server.security import (check_binding, cookie_name, data_dir_token, host_name,
                                   parse_origin, token_path)
from engine.errors import CllmError
from store import open_store
from store.targets import list_targets
from tests.agent.server.conftest import train_tiny, wait_loaded

BODY = {"prompt": "x", "max_tokens": 1}
TLS = Path(__file__).parent / "tls"     # a self-signed certificate for 127.0.0.1, tests only


def targets(data_dir: Path) -> list:
    with open_store(data_dir) as store, store.session(read_only=True) as s:
        return [(t.kind, t.location) for t in list_targets(s)]


def test_requests_naming_another_host_are_refused(serve, trained, http):
    server = serve(trained)
    u = server.url
    for host in ("evil.example", "evil.example:%d" % server.port, "127.0.0.1.evil.example"):
        r = http.get(u + "/health", headers={"Host": host})
        assert r.status_code == 421 and r.json()["error"]["type"] == "permission_error"
    r = http.post(u + "/v1/completions", json=BODY, headers={"Host": "attacker.test"})
    assert r.status_code == 421
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "localhost"):
        assert http.get(u + "/v1/models", headers={"Host": host}).status_code == 200


def test_allowed_host_adds_a_name(serve, trained, http):
    server = serve(trained, allowed_hosts=("cllm.lan",))
    assert http.get(server.url + "/v1/models", headers={"Host": "cllm.lan:80"}).status_code == 200
    assert http.get(server.url + "/v1/models", headers={"Host": "other.lan"}).status_code == 421


def test_a_page_on_another_local_port_cannot_steer_the_agent(serve, trained, http):
    """The reproduced attack: a page on http://127.0.0.1:<another port> (a dev server, a
    notebook's output) posts text/plain JSON, which needs no preflight, and the browser
    sends this server's cookie along (cookies are not kept apart by port)."""
    server = serve(trained)
    u, port, token = server.url, server.port, http.tokens[server.url]
    before = targets(trained)
    attack = {"content": b'{"kind": "watch", "location": "/"}',
              "cookies": {cookie_name(port): token}, "headers": {"Content-Type": "text/plain"}}
    for origin in (f"http://127.0.0.1:{port + 1}", f"http://localhost:{port + 1}",
                   f"https://127.0.0.1:{port}", "http://127.0.0.1", "null"):
        r = httpx.post(u + "/api/targets", content=attack["content"], cookies=attack["cookies"],
                       headers={**attack["headers"], "Origin": origin,
                                "Sec-Fetch-Site": "same-site"})
        assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error", origin
        # the Origin alone refuses it, whatever Sec-Fetch-Site says (an old browser)
        r = httpx.post(u + "/api/targets", content=attack["content"], cookies=attack["cookies"],
                       headers={**attack["headers"], "Origin": origin})
        assert r.status_code == 403, origin
    # a browser that sends no Origin still marks the request same-site
    r = httpx.post(u + "/api/targets", json={"kind": "watch", "location": "/"},
                   cookies=attack["cookies"], headers={"Sec-Fetch-Site": "same-site"})
    assert r.status_code == 403
    # text/plain (or a form) is refused even with the right credential and no Origin
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        r = http.post(u + "/api/targets", content=attack["content"],
                      headers={"Content-Type": kind})
        assert r.status_code == 415 and "application/json" in r.json()["error"]["message"]
    r = http.post(u + "/api/training", content=b'{"paused": true}')     # no Content-Type
    assert r.status_code == 415
    assert targets(trained) == before


def test_sec_fetch_site_cross_site_is_refused_and_same_origin_works(serve, trained, http):
    server = serve(trained)
    wait_loaded(server)
    u, port = server.url, server.port
    for site in ("cross-site", "same-site"):
        r = http.post(u + "/v1/completions", json=BODY, headers={"Sec-Fetch-Site": site})
        assert r.status_code == 403 and site in r.json()["error"]["message"]
    # the dashboard's own request: its origin (any loopback spelling), same-origin, the
    # cookie, JSON
    cookie = {cookie_name(port): http.tokens[u]}
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        r = httpx.post(u + "/v1/completions", json=BODY, cookies=cookie,
                       headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 200, (origin, r.text)
    # a request the user typed (Sec-Fetch-Site: none) and a non-browser client (no Origin,
    # no Sec-Fetch-Site) with the token
    assert http.post(u + "/v1/completions", json=BODY,
                     headers={"Sec-Fetch-Site": "none"}).status_code == 200
    assert http.post(u + "/v1/completions", json=BODY).status_code == 200
    # reads are not state-changing; without --cors no CORS headers are ever sent
    r = http.get(u + "/v1/models", headers={"Origin": "https://evil.example",
                                            "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    pre = httpx.options(u + "/v1/completions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers


def test_cors_origin_is_allowed_only_when_given(serve, trained, http):
    app = "https://app.example"
    server = serve(trained, cors=(app,))
    wait_loaded(server)
    u = server.url
    pre = httpx.options(u + "/v1/completions", headers={
        "Origin": app, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == app
    r = http.post(u + "/v1/completions", json=BODY,
                  headers={"Origin": app, "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == app
    r = http.post(u + "/v1/completions", json=BODY, headers={"Origin": "https://other.example"})
    assert r.status_code == 403
    assert httpx.post(u + "/v1/completions", json=BODY, headers={"Origin": app}).status_code == 401


def test_origins_are_compared_whole():
    assert parse_origin("http://127.0.0.1:8765") == ("http", "127.0.0.1", 8765)
    assert parse_origin("HTTP://LocalHost") == ("http", "localhost", 80)
    assert parse_origin("https://[::1]") == ("https", "::1", 443)
    for bad in ("null", "file://", "http://x:99999", "ftp://a", "http://a/path", ""):
        assert parse_origin(bad) is None, bad


def test_loopback_needs_the_token_too_and_only_health_is_open(serve, trained, http):
    server = serve(trained)
    u, port, token = server.url, server.port, http.tokens[server.url]
    assert server.token == token == token_path(trained).read_text().strip()
    assert httpx.get(u + "/health").status_code in (200, 503)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
        for path in ("/v1/models", "/api/status", "/api/tags", "/metrics", "/",
                     "/static/app.js", "/api/events"):
            r = httpx.get(u + path, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            assert r.headers["www-authenticate"] == "Bearer"
        assert httpx.post(u + "/v1/completions", json=BODY, headers=headers).status_code == 401
    ok = {"Authorization": f"Bearer {token}"}
    assert httpx.get(u + "/v1/models", headers=ok).status_code == 200
    assert httpx.get(u + "/v1/models", cookies={cookie_name(port): token}).status_code == 200
    # another port's cookie, or the old unscoped name, is no credential here
    for name in ("cllm_token", cookie_name(port + 1)):
        assert httpx.get(u + "/v1/models", cookies={name: token}).status_code == 401


def test_the_token_is_made_once_private_and_kept(serve, corpus, tmp_path):
    data = tmp_path / "data"
    train_tiny(corpus, data)
    path = token_path(data)
    assert not path.exists()
    first = serve(data).token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) >= 40
    assert serve(data).token == first == data_dir_token(data)      # kept across starts
    path.chmod(0o644)                                          # loosened by hand: tightened
    assert data_dir_token(data) == first and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.unlink()                                              # a planted link is refused
    (tmp_path / "known").write_text("attackers-token\n")
    path.symlink_to(tmp_path / "known")
    with pytest.raises(CllmError, match="cannot read the token file"):
        serve(data)
    path.unlink()
    assert serve(data).token not in (first, "attackers-token")   # a new one is made


def test_auth_none_opens_loopback_only(serve, trained):
    server = serve(trained, auth="none")
    assert server.token is None
    assert httpx.get(server.url + "/v1/models").status_code == 200
    assert httpx.post(server.url + "/v1/completions", json=BODY,
                      headers={"Origin": f"http://127.0.0.1:{server.port + 1}"}).status_code == 403
    with pytest.raises(CllmError, match="needs a token"):
        check_binding(ServeConfig(host="0.0.0.0", auth="none", allow_http=True))
    with pytest.raises(CllmError, match="contradict"):
        check_binding(ServeConfig(auth="none", token="abc"))


def test_binding_beyond_loopback_needs_tls_or_allow_http(serve, trained, http):
    for host in ("0.0.0.0", "192.168.1.10", "::"):
        with pytest.raises(CllmError, match="without TLS"):
            check_binding(ServeConfig(host=host))
        check_binding(ServeConfig(host=host, allow_http=True))
        check_binding(ServeConfig(host=host, tls_cert=TLS / "cert.pem", tls_key=TLS / "key.pem"))
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_binding(ServeConfig(host=host))
    with pytest.raises(CllmError, match="go together"):
        check_binding(ServeConfig(tls_cert=TLS / "cert.pem"))
    with pytest.raises(CllmError, match="cannot use the TLS certificate"):
        check_binding(ServeConfig(tls_cert=TLS / "key.pem", tls_key=TLS / "key.pem"))
    with pytest.raises(CllmError, match="without TLS"):
        serve(trained, host="0.0.0.0")
    server = serve(trained, host="0.0.0.0", allow_http=True, token="s3cret")
    assert http.get(server.url + "/v1/models").status_code == 200
    assert httpx.get(server.url + "/v1/models").status_code == 401


def test_tls_serves_https_with_a_secure_cookie(serve, trained, http):
    server = serve(trained, tls_cert=TLS / "cert.pem", tls_key=TLS / "key.pem")
    wait_loaded(server)
    u, token = server.url, http.tokens[server.url]
    assert u.startswith("https://127.0.0.1:")
    ctx = ssl.create_default_context(cafile=str(TLS / "cert.pem"))
    r = httpx.get(u + "/v1/models", headers={"Authorization": f"Bearer {token}"}, verify=ctx)
    assert r.status_code == 200
    r = httpx.get(u + f"/?token={token}", verify=ctx)
    assert r.status_code == 303 and "; secure" in r.headers["set-cookie"].lower()
    r = httpx.post(u + "/v1/completions", json=BODY, verify=ctx,
                   cookies={cookie_name(server.port): token},
                   headers={"Origin": f"https://localhost:{server.port}"})
    assert r.status_code == 200
    with pytest.raises(httpx.HTTPError):           # plain HTTP on the TLS port
        httpx.get(u.replace("https://", "http://") + "/health")


def test_the_dashboard_link_sets_a_scoped_cookie_and_leaves_the_address_bar(serve, trained,
                                                                            http):
    server = serve(trained)
    u, token = server.url, http.tokens[server.url]
    assert httpx.get(u + "/").status_code == 401
    assert httpx.get(u + "/?token=wrong").status_code == 401
    r = httpx.get(u + f"/?token={token}")
    assert r.status_code == 303 and r.headers["location"] == "/"
    parts = [p.strip().lower() for p in r.headers["set-cookie"].split(";")]
    assert parts[0] == f"{cookie_name(server.port)}={token}".lower()
    assert {"httponly", "samesite=strict", "path=/"} <= set(parts)
    assert "secure" not in parts                               # plain HTTP on loopback
    assert httpx.get(u + f"/?tab=llm&token={token}").headers["location"] == "/?tab=llm"
    with httpx.Client(follow_redirects=True) as c:            # what a browser does
        page = c.get(u + f"/?token={token}")
        assert page.status_code == 200 and str(page.url) == u + "/"
        assert c.get(u + "/api/status").status_code == 200
        assert c.get(u + "/static/app.js").status_code == 200
    assert httpx.get(u + f"/api/status?token={token}").status_code == 401   # only the page


def test_every_response_forbids_framing_and_sniffing(serve, trained, http):
    server = serve(trained)
    u = server.url
    for r in (http.get(u + "/"), http.get(u + "/v1/models"), httpx.get(u + "/v1/models"),
              http.get(u + "/static/app.js"), http.get(u + "/health", headers={"Host": "x"})):
        assert r.headers["x-frame-options"] == "DENY"
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"


def test_a_500_says_nothing_of_the_exception(serve, trained, http, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("secret detail /home/someone/.ssh")
    monkeypatch.setattr(reports, "status_view", broken)
    server = serve(trained)
    with caplog.at_level(logging.ERROR, logger="agent.server.errors"):
        r = http.get(server.url + "/api/status")
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    rid = r.headers["x-request-id"]
    assert rid in r.json()["error"]["message"]
    assert "secret" not in r.text and "RuntimeError" not in r.text and ".ssh" not in r.text
    logged = [rec for rec in caplog.records if rid in rec.getMessage()]
    assert logged and "secret detail" in str(logged[0].exc_info[1])


def test_models_and_tags_show_no_absolute_path(serve, trained, http):
    server = serve(trained)
    ckpt = wait_loaded(server)
    model = http.get(server.url + "/v1/models").json()["data"][0]
    assert model["checkpoint_file"] == Path(ckpt.path).name and "checkpoint_path" not in model
    tags = http.get(server.url + "/api/tags").json()
    health = http.get(server.url + "/health").json()
    for doc in (model, tags, health):
        assert str(trained) not in str(doc) and os.sep + "checkpoints" not in str(doc)


def test_host_header_names_parse():
    assert host_name("127.0.0.1:8765") == "127.0.0.1"
    assert host_name("[::1]:8765") == "::1"
    assert host_name("LocalHost") == "localhost"


def test_serve_config_is_checked_whole():
    cfg = replace(ServeConfig(), host="10.0.0.1", allow_http=True)
    check_binding(cfg)
    with pytest.raises(CllmError, match="is not one of"):
        check_binding(replace(cfg, auth="maybe"))
