"""The rules of a local server against a real one: the Host header (DNS rebinding), the
Origin of state-changing requests, CORS only when asked for, and the token that any
binding beyond loopback requires."""
from __future__ import annotations

import httpx
import pytest

from agent.server.security import check_binding, host_name
from engine.errors import CllmError

BODY = {"prompt": "x", "max_tokens": 1}


def test_requests_naming_another_host_are_refused(serve, trained):
    server = serve(trained)
    u = server.url
    for host in ("evil.example", "evil.example:%d" % server.port, "127.0.0.1.evil.example"):
        r = httpx.get(u + "/health", headers={"Host": host})
        assert r.status_code == 421 and r.json()["error"]["type"] == "permission_error"
    r = httpx.post(u + "/v1/completions", json=BODY, headers={"Host": "attacker.test"})
    assert r.status_code == 421
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "localhost"):
        assert httpx.get(u + "/v1/models", headers={"Host": host}).status_code == 200


def test_allowed_host_adds_a_name(serve, trained):
    server = serve(trained, allowed_hosts=("cllm.lan",))
    assert httpx.get(server.url + "/v1/models", headers={"Host": "cllm.lan:80"}).status_code == 200
    assert httpx.get(server.url + "/v1/models", headers={"Host": "other.lan"}).status_code == 421


def test_state_changing_requests_from_other_origins_are_refused(serve, trained):
    server = serve(trained)
    u = server.url
    r = httpx.post(u + "/v1/completions", json=BODY, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "origin" in r.json()["error"]["message"]
    assert "access-control-allow-origin" not in r.headers
    for origin in (f"http://127.0.0.1:{server.port}", f"http://localhost:{server.port}"):
        r = httpx.post(u + "/v1/completions", json=BODY, headers={"Origin": origin})
        assert r.status_code != 403, origin
    # reads are not state-changing; without --cors no CORS headers are ever sent
    r = httpx.get(u + "/v1/models", headers={"Origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    pre = httpx.options(u + "/v1/completions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers


def test_cors_origin_is_allowed_only_when_given(serve, trained):
    app = "https://app.example"
    server = serve(trained, cors=(app,))
    u = server.url
    pre = httpx.options(u + "/v1/completions", headers={
        "Origin": app, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == app
    r = httpx.post(u + "/v1/completions", json=BODY, headers={"Origin": app})
    assert r.status_code != 403 and r.headers["access-control-allow-origin"] == app
    r = httpx.post(u + "/v1/completions", json=BODY, headers={"Origin": "https://other.example"})
    assert r.status_code == 403


def test_binding_beyond_loopback_needs_a_token(serve, trained):
    for host in ("0.0.0.0", "192.168.1.10", "::"):
        with pytest.raises(CllmError, match="needs a token"):
            check_binding(host, None)
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_binding(host, None)
    with pytest.raises(CllmError, match="needs a token"):
        serve(trained, host="0.0.0.0")


def test_token_is_required_on_everything_but_health(serve, trained):
    server = serve(trained, host="0.0.0.0", token="s3cret")
    u = server.url
    assert httpx.get(u + "/health").status_code in (200, 503)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        r = httpx.get(u + "/v1/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"] == "Bearer"
        assert httpx.post(u + "/v1/completions", json=BODY, headers=headers).status_code == 401
    ok = {"Authorization": "Bearer s3cret"}
    assert httpx.get(u + "/v1/models", headers=ok).status_code == 200
    assert httpx.get(u + "/v1/models", cookies={"cllm_token": "s3cret"}).status_code == 200


def test_host_header_names_parse():
    assert host_name("127.0.0.1:8765") == "127.0.0.1"
    assert host_name("[::1]:8765") == "::1"
    assert host_name("LocalHost") == "localhost"


def test_the_dashboard_link_with_the_token_sets_its_cookie(serve, trained):
    server = serve(trained, host="0.0.0.0", token="s3cret")
    u = server.url
    assert httpx.get(u + "/").status_code == 401
    assert httpx.get(u + "/?token=wrong").status_code == 401
    page = httpx.get(u + "/?token=s3cret")
    assert page.status_code == 200 and page.cookies["cllm_token"] == "s3cret"
    assert "httponly" in page.headers["set-cookie"].lower()
    with httpx.Client(cookies=page.cookies) as c:         # what the page's requests send
        assert c.get(u + "/api/status").status_code == 200
        assert c.get(u + "/static/app.js").status_code == 200
    assert httpx.get(u + "/api/status?token=s3cret").status_code == 401   # only the page link
