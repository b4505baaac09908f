"""What a background agent takes of the machine (issue 27, agent/limits.py): the workers and
duty cycle of --cpu-share; the power-supply and load readers on fixture folders; the reasons
of a pause; and a running agent paused by a fake power supply switched from mains to battery
(the cycle in progress ends at a step boundary and is committed), the reason visible in
`cllm status` and the store, and resumed when mains comes back."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent import continuous_trainer
from agent.cli import main
from agent.daemon import Agent, AgentConfig
from agent.limits import (BATTERY, LOAD, USER, LimitMonitor, OwnLoad, Pauses, load_average,
                          power_source, share_plan)
from agent.reports import status_view
from agent.settings import TrainerSettings
from agent.training.learn import _Rest
from store import open_store
from store.cycles import list_cycles

TIMEOUT = 120


# --------------------------------------------------------------------------- --cpu-share

@pytest.mark.parametrize("workers, share, cpus, plan", [
    (None, None, 8, None),          # no share: the default workers (usable CPUs - 1)
    (None, 1.0, 8, (8, 1.0)),
    (None, 0.5, 8, (4, 1.0)),
    (None, 0.3, 8, (2, 1.0)),       # 2.4 CPUs: 2 workers, never above the share
    (None, 0.5, 1, (1, 0.5)),       # half a CPU: one worker half of the time
    (None, 0.25, 2, (1, 0.5)),
    (4, 0.5, 4, (4, 0.5)),          # --workers 4 within 2 CPUs: a duty cycle of one half
    (2, 1.0, 8, (2, 1.0)),
])
def test_cpu_share_gives_workers_and_a_duty_cycle(workers, share, cpus, plan):
    got = share_plan(workers, share, cpus)
    if plan is None:
        from engine.cpu import default_workers
        assert got == (default_workers(), 1.0)
    else:
        assert got == pytest.approx(plan)


def test_a_duty_cycle_rests_in_proportion_and_a_ring_ends_the_rest_at_once():
    bell, why = threading.Event(), []
    rest = _Rest(0.25, bell, lambda: why[0] if why else None)
    t0 = time.monotonic()
    rest.after(0.05)                              # rests 0.05 * (1/0.25 - 1) = 0.15 s
    assert time.monotonic() - t0 >= 0.15
    # a ring that does not end the run (no reason) does not shorten it ...
    ring = threading.Timer(0.02, bell.set)
    ring.start()
    t0 = time.monotonic()
    rest.after(0.05)
    assert time.monotonic() - t0 >= 0.15
    ring.join()
    # ... a pause does, at once
    t0 = time.monotonic()
    pause = threading.Timer(0.05, lambda: (why.append("paused"), bell.set()))
    pause.start()
    rest.after(100.0)                             # a 300 s rest, cut short
    assert time.monotonic() - t0 < 30
    pause.join()
    assert _Rest(1.0, None, None).factor == 0.0   # the whole share: no rest at all


# --------------------------------------------------------------------------- the readers

def supply(root: Path, name: str, **files: str) -> None:
    d = root / "sys/class/power_supply" / name
    d.mkdir(parents=True, exist_ok=True)
    for k, v in files.items():
        (d / k).write_text(v + "\n")


def laptop(root: Path, online: bool) -> Path:
    supply(root, "AC", type="Mains", online="1" if online else "0")
    supply(root, "BAT0", type="Battery", status="Charging" if online else "Discharging")
    supply(root, "hidpp_battery_0", type="Battery", scope="Device", status="Discharging")
    return root


def test_the_power_supply_says_battery_mains_or_nothing(tmp_path):
    assert power_source(laptop(tmp_path / "a", online=True)) == "mains"
    assert power_source(laptop(tmp_path / "b", online=False)) == "battery"
    desktop = tmp_path / "c"
    supply(desktop, "AC", type="Mains", online="1")
    supply(desktop, "mouse", type="Battery", scope="Device", status="Discharging")
    assert power_source(desktop) is None            # no battery of its own: never paused
    assert power_source(tmp_path / "no-sys") is None
    lone = tmp_path / "d"                           # a battery without a mains entry
    supply(lone, "BAT1", type="Battery", status="Discharging")
    assert power_source(lone) == "battery"
    supply(lone, "BAT1", type="Battery", status="Full")
    assert power_source(lone) == "mains"
    usb = laptop(tmp_path / "e", online=False)      # charged through USB-C
    supply(usb, "ucsi-source-psy-USBC000:001", type="USB", online="1")
    assert power_source(usb) == "mains"


def test_the_load_average_is_read_under_the_root(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/loadavg").write_text("3.25 2.00 1.00 2/300 12345\n")
    assert load_average(tmp_path) == 3.25
    assert load_average(tmp_path / "nothing") is None
    assert load_average() is not None                # this machine's


def test_the_agents_own_share_of_the_load_follows_its_cpu_use():
    now, cpu = [0.0], [0.0]
    own = OwnLoad(clock=lambda: now[0], cpu=lambda: cpu[0])
    for _ in range(60):                              # 2 CPUs busy for ten minutes
        now[0] += 10
        cpu[0] += 20
        own.update()
    assert own.value == pytest.approx(2.0, rel=0.01)
    now[0] += 60                                     # a minute idle: down by 1/e
    assert own.update() == pytest.approx(2.0 / 2.718281828, rel=0.02)


def test_pauses_hold_until_every_reason_is_gone():
    p, changes = Pauses(), []
    p.listeners.append(lambda: changes.append(dict(p.reasons())))
    assert p.set(BATTERY, "on battery") and p.event.is_set()
    assert not p.set(BATTERY, "on battery again")    # its first sentence stays
    p.set(USER, "a user")
    assert list(p.reasons()) == [USER, BATTERY]      # shown in REASONS order
    assert p.clear(BATTERY) and p.event.is_set()
    assert p.clear(USER) and not p.event.is_set()
    assert not p.clear(LOAD)
    assert len(changes) == 4


def test_the_load_pause_starts_above_the_limit_and_ends_below_four_fifths_of_it(tmp_path):
    (tmp_path / "proc").mkdir()
    loadavg = tmp_path / "proc/loadavg"
    p = Pauses()
    mon = LimitMonitor(p, on_battery=True, above_load=1.0, interval=60, root=tmp_path, cpus=2)
    mon.own = OwnLoad(clock=lambda: 0.0, cpu=lambda: 0.0)      # the agent itself: idle
    for load, paused in (("1.5", False), ("2.5", True), ("1.9", True), ("1.5", False)):
        loadavg.write_text(f"{load} 1.0 1.0 1/100 1\n")
        mon.check()
        assert p.event.is_set() == paused, load
    loadavg.write_text("9.0 1.0 1.0 1/100 1\n")
    mon.check()
    assert "above 2.0" in p.reasons()[LOAD]
    assert BATTERY not in p.reasons()                # no battery in the fixture root


def test_the_monitor_thread_checks_at_start_and_is_joined(tmp_path):
    p = Pauses()
    mon = LimitMonitor(p, on_battery=True, above_load=None, interval=3600,
                       root=laptop(tmp_path, online=False), cpus=1).start()
    try:
        assert p.event.wait(TIMEOUT)                 # the first check, without an interval
    finally:
        mon.close()
    assert mon._thread is None and BATTERY in p.reasons()


# --------------------------------------------------------------------------- a running agent

def test_a_fake_power_supply_pauses_and_resumes_a_running_agent(tmp_path, monkeypatch):
    root, data, watch = laptop(tmp_path / "root", online=True), tmp_path / "data", tmp_path / "w"
    watch.mkdir()
    (watch / "a.txt").write_text("the agent learns on mains power and rests on battery. " * 60)
    stepping, committed, reports = threading.Event(), threading.Event(), []
    paused_phase, other_phase = threading.Event(), threading.Event()
    Trainer = continuous_trainer.ContinuousTrainer
    real_learn, real_run, real_phase = continuous_trainer.learn, Trainer.run_pending, \
        Trainer._set_phase

    def learn(*args, progress=None, **kw):
        def step(*a):
            stepping.set()
            if progress is not None:
                progress(*a)
        return real_learn(*args, progress=step, **kw)

    def run_pending(self, trigger):
        rep = real_run(self, trigger)
        if rep is not None:
            reports.append(rep)
            committed.set()
        return rep

    def set_phase(self, phase, reason, paused_by=()):
        real_phase(self, phase, reason, paused_by)       # recorded in the store, then told
        (paused_phase if phase == "paused" else other_phase).set()

    monkeypatch.setattr(continuous_trainer, "learn", learn)
    monkeypatch.setattr(Trainer, "run_pending", run_pending)
    monkeypatch.setattr(Trainer, "_set_phase", set_phase)
    # long cycles over a long budget: the one running when the battery takes over can only
    # end by the pause
    monkeypatch.setattr(continuous_trainer, "FIRST_CYCLE_S", 600.0)
    agent = Agent(AgentConfig(data, TrainerSettings(preset="tiny", workers=1, batch_size=2,
                                                     min_cycle_tokens=50, cycle_seconds=600,
                                                     passes=1000.0),
                              watch=(str(watch),), quiet_period=0.1, system_root=str(root),
                              pause_on_battery=True, limits_interval=0.05))
    t = threading.Thread(target=agent.run)
    t.start()
    store = open_store(data)
    try:
        assert stepping.wait(TIMEOUT), "no training step on mains power"
        assert not agent.paused.is_set() and not committed.is_set()
        (root / "sys/class/power_supply/AC/online").write_text("0\n")     # unplugged
        assert agent.paused.wait(TIMEOUT), "the battery did not pause training"
        assert committed.wait(TIMEOUT), "the cycle in progress was not committed"
        assert reports[0].ended_by == "paused" and reports[0].run.steps >= 1
        with store.session(read_only=True) as s:
            assert list_cycles(s, limit=1)[0].status == "completed"
        assert paused_phase.wait(TIMEOUT)
        status = read_status(store, data)
        assert status["paused_by"] == [BATTERY] and not status["training_paused"]
        assert "battery" in status["training_phase"]["reason"]
        r = CliRunner().invoke(main, ["status", "--data-dir", str(data)])
        assert r.exit_code == 0 and "training is paused: the machine runs on battery" in r.output
        assert "resume it from the dashboard" not in r.output     # not the user's pause
        stepping.clear()
        other_phase.clear()
        (root / "sys/class/power_supply/AC/online").write_text("1\n")     # plugged in
        assert stepping.wait(TIMEOUT), "training did not resume on mains power"
        assert not agent.paused.is_set() and other_phase.is_set()
        assert read_status(store, data)["paused_by"] == []
    finally:
        agent.stop.set()
        t.join(TIMEOUT)
        store.close()
    assert not t.is_alive() and not agent.errors
    assert agent.limits is not None and agent.limits._thread is None      # joined


def read_status(store, data) -> dict:
    with store.session(read_only=True) as s:
        return status_view(s, data, store.describe())
