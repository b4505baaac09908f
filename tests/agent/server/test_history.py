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
