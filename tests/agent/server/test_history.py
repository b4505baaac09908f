"""/api/* answers the same rows as the CLI's --json, /api/steps the per-step losses the store
keeps, and /metrics is Prometheus text with the store's state and the server's counters."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from agent.cli import main
from store import open_store
from store.cycles import step_metrics
from tests.agent.server.conftest import wait_loaded


def cli_json(*args):
    r = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


@pytest.mark.parametrize("path, cli", [
    ("/api/status", ["status"]),
    ("/api/cycles", ["history", "cycles"]),
    ("/api/documents", ["history", "documents"]),
    ("/api/documents?status=learning&limit=1", ["history", "documents", "--status", "learning",
                                                "--limit", "1"]),
    ("/api/urls", ["history", "urls"]),
    ("/api/vocab", ["history", "vocab"]),
    ("/api/vocab?cycle=1", ["history", "vocab", "--cycle", "1"]),
    ("/api/forgetting", ["history", "forgetting"]),
    ("/api/checkpoints?verify=1", ["history", "checkpoints", "--verify"]),
])
def test_api_views_are_the_cli_json(serve, trained, path, cli, http):
    server = serve(trained)
    r = http.get(server.url + path)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    expected = cli_json(*cli, "--data-dir", str(trained), "--json")
    assert r.json() == expected
    if path.startswith(("/api/cycles", "/api/vocab", "/api/checkpoints", "/api/forgetting")):
        assert expected                      # the tiny data directory has rows for these


def test_api_steps_are_the_recorded_step_losses(serve, trained, http):
    server = serve(trained)
    rows = http.get(server.url + "/api/steps").json()
    with open_store(trained) as store, store.session(read_only=True) as s:
        expected = [(m.cycle_id, m.step, m.loss) for c in (1, 2) for m in step_metrics(s, c)]
    assert [(r["cycle_id"], r["step"], r["loss"]) for r in rows] == expected
    assert {r["cycle_id"] for r in rows} == {1, 2}
    one = http.get(server.url + "/api/steps?cycle=2").json()
    assert one and all(r["cycle_id"] == 2 for r in one)


@pytest.mark.parametrize("query", ["/api/documents?status=bogus", "/api/documents?limit=0",
                                   "/api/steps?cycle=x", "/api/checkpoints?verify=maybe"])
def test_bad_query_parameters_get_400_json(serve, trained, query, http):
    server = serve(trained)
    r = http.get(server.url + query)
    assert r.status_code == 400 and "query parameter" in r.json()["error"]["message"]


def test_metrics_are_prometheus_text_with_store_state_and_generation_counters(serve, trained, http):
    server = serve(trained)
    wait_loaded(server)
    r = http.post(server.url + "/v1/completions", json={"prompt": "every", "max_tokens": 6})
    produced = r.json()["usage"]["completion_tokens"]
    m = http.get(server.url + "/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(m.text) for s in fam.samples}
    status = http.get(server.url + "/api/status").json()
    assert samples[("cllm_cycles", (("status", "completed"),))] == 2
    for st, n in status["documents"].items():
        assert samples[("cllm_documents", (("status", st),))] == n
    assert samples[("cllm_backlog_documents", ())] == status["backlog"]["documents"]
    assert samples[("cllm_training_tokens_per_second", ())] == pytest.approx(
        status["backlog"]["tokens_per_s"])
    assert samples[("cllm_served_cycle", ())] == 2
    assert samples[("cllm_generation_requests_total", (("outcome", "finished"),))] == 1
    assert samples[("cllm_generated_tokens_total", ())] == produced
    assert samples[("cllm_generation_seconds_count", ())] == 1
    assert samples[("cllm_checkpoint_loads_total", ())] == 1


def test_the_trainer_phase_reaches_status_the_cli_and_metrics(serve, trained, tmp_path, http):
    import shutil

    from agent.datadir import DataDirLock
    from store import controls

    data = tmp_path / "data"
    shutil.copytree(trained, data)
    why = "held-out loss 2.1000, best before 2.2000: still improving"
    with open_store(data) as store, store.session() as s:
        controls.set_trainer_phase(s, "consolidating", why)
    server = serve(data)
    phase = http.get(server.url + "/api/status").json()["training_phase"]
    assert (phase["phase"], phase["reason"]) == ("consolidating", why) and phase["since"]
    m = http.get(server.url + "/metrics")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(m.text) for s in fam.samples}
    assert samples[("cllm_training_phase", (("phase", "consolidating"),))] == 1
    with DataDirLock(data):                     # an agent runs on it
        r = CliRunner().invoke(main, ["status", "--data-dir", str(data)])
    assert r.exit_code == 0 and f"training: consolidating ({why})" in r.output


def test_why_training_is_paused_reaches_status_the_cli_and_metrics(serve, trained, tmp_path, http):
    """A trainer paused on battery and by a user records both reasons with its phase:
    /api/status and `cllm status` say why, /metrics has one gauge per reason (issue 27)."""
    import shutil

    from agent.datadir import DataDirLock
    from store import controls

    data = tmp_path / "data"
    shutil.copytree(trained, data)
    why = "paused by a user (the dashboard or POST /api/training); the machine runs on battery"
    with open_store(data) as store, store.session() as s:
        controls.set_paused(s, True, by="dashboard")
        controls.set_trainer_phase(s, "paused", why, paused_by=["user", "battery"])
    server = serve(data)
    with DataDirLock(data):                     # an agent runs on it
        st = http.get(server.url + "/api/status").json()
        m = http.get(server.url + "/metrics")
        r = CliRunner().invoke(main, ["status", "--data-dir", str(data)])
    assert st["paused_by"] == ["user", "battery"] and st["training_phase"]["reason"] == why
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(m.text) for s in fam.samples}
    assert [samples[("cllm_training_paused", (("reason", k),))] for k in
            ("user", "battery", "load")] == [1, 1, 0]
    assert samples[("cllm_training_phase", (("phase", "paused"),))] == 1
    assert r.exit_code == 0 and f"training is paused: {why} (resume it" in r.output
    # no agent running: only the user's pause (a row of the store) is left to say
    st = http.get(server.url + "/api/status").json()
    assert st["paused_by"] == ["user"]


def _with_urls(trained, tmp_path, n: int):
    """A copy of the trained data directory with `n` recorded URLs (queued, in order)."""
    import shutil

    from store import frontier

    data = tmp_path / "data"
    shutil.copytree(trained, data)
    with open_store(data) as store, store.session() as s:
        frontier.queue_urls(s, [f"https://example.org/p{i}" for i in range(n)], depth=1)
    return data


def test_api_urls_answer_a_default_page_and_link_the_next(serve, trained, tmp_path, http):
    """Past the default page size the body is still the rows' list (the CLI's rows), the
    total and the next page are in the headers, and following the links gives every row
    once."""
    from agent.server.history import DEFAULT_PAGE

    server = serve(_with_urls(trained, tmp_path, DEFAULT_PAGE + 5))
    r = http.get(server.url + "/api/urls")
    assert r.status_code == 200 and isinstance(r.json(), list) and len(r.json()) == DEFAULT_PAGE
    assert r.headers["x-total-count"] == str(DEFAULT_PAGE + 5)
    assert r.headers["link"] == f'</api/urls?limit={DEFAULT_PAGE}&offset={DEFAULT_PAGE}>; rel="next"'
    got, path = [], "/api/urls?limit=400&status=queued"
    while path:
        r = http.get(server.url + path)
        got += [row["url"] for row in r.json()]
        link = r.headers.get("link")
        path = link[1:link.index(">")] if link else None
    assert got == [f"https://example.org/p{i}" for i in range(DEFAULT_PAGE + 5)]
    assert http.get(server.url + "/api/urls?status=fetched").headers["x-total-count"] == "0"


def test_api_steps_and_documents_page_in_order(serve, trained, http):
    server = serve(trained)
    for view in ("steps", "documents"):
        whole = http.get(server.url + f"/api/{view}")
        assert whole.headers["x-total-count"] == str(len(whole.json())) and "link" not in whole.headers
        assert len(whole.json()) >= 2, view
        pages = [http.get(server.url + f"/api/{view}?limit=1&offset={o}").json()
                 for o in range(len(whole.json()) + 1)]
        assert [row for p in pages for row in p] == whole.json()
    one = http.get(server.url + "/api/steps?cycle=2&limit=1")
    assert one.json()[0]["cycle_id"] == 2 and "offset=1" in one.headers["link"]
    assert int(one.headers["x-total-count"]) == len(http.get(server.url + "/api/steps?cycle=2").json())


@pytest.mark.parametrize("query", ["/api/urls?limit=0", "/api/urls?limit=10001", "/api/urls?offset=-1",
                                   "/api/steps?offset=x", "/api/steps?limit=1.5", "/api/urls?status=bogus",
                                   "/api/documents?limit=99999"])
def test_bad_paging_parameters_get_400_json(serve, trained, query, http):
    server = serve(trained)
    r = http.get(server.url + query)
    assert r.status_code == 400 and "query parameter" in r.json()["error"]["message"]


def test_the_event_feed_counts_urls_in_sql_without_loading_their_rows(trained, tmp_path):
    """Every store change makes the dashboard's watcher read a digest: it must not load the
    URL rows (a crawl records them by the thousand), yet see a URL recorded or changed."""
    from sqlalchemy import event

    from agent.server.events import store_digest
    from store import frontier
    from store.models import FetchedUrl, UrlStatus

    data = _with_urls(trained, tmp_path, 300)
    with open_store(data) as store:
        loaded = []

        def digest():
            with store.session(read_only=True) as s:
                event.listen(s, "loaded_as_persistent", lambda _s, obj: loaded.append(type(obj)))
                return store_digest(s, data, store.describe())

        before = digest()
        assert FetchedUrl not in loaded
        with store.session() as s:
            frontier.record_url(s, "https://example.org/p7", status=UrlStatus.FETCHED, http_status=200)
        changed = digest()
        assert changed["urls"] != before["urls"]       # a status change, the count the same
        with store.session() as s:
            frontier.queue_urls(s, ["https://example.org/new"], depth=1)
        assert digest()["urls"] != changed["urls"]
        assert FetchedUrl not in loaded
