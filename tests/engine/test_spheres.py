"""ThreadedTrainingSystem: equality with one worker, determinism, failures, skips, topology."""
import threading
import time

import numpy as np
import pytest

import engine
from engine import Model, Optimizer, ThreadedTrainingSystem, TrainConfig, WatchdogTimeout, WorkerError
from engine.spheres import build_hierarchy

CFG = engine.tiny
SGD = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, warmup_steps=0, grad_clip=1.0)


def data(B=7, T=12, seed=0, ignore_rows=()):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, CFG.vocab_size, (B, T))
    y = rng.integers(0, CFG.vocab_size, (B, T))
    for r in ignore_rows:
        y[r] = -1
    return x, y


def run(n, steps=4, tcfg=SGD, **kw):
    m = Model(CFG, seed=0)
    results = []
    with ThreadedTrainingSystem(m, tcfg, n_workers=n) as s:
        for i in range(steps):
            results.append(s.train_step(*data(seed=i, **kw)))
    return m, results


def single_process_reference(steps=4, tcfg=SGD, **kw):
    """The same training with no threads at all: loss_and_grad + Optimizer.step."""
    m = Model(CFG, seed=0)
    opt = Optimizer(m.layout, tcfg)
    for i in range(steps):
        loss, g = m.loss_and_grad(*data(seed=i, **kw))
        opt.step(m.params, g, engine.lr_at(i, tcfg))
    return m


@pytest.mark.parametrize("n", [1, 2, 3, 5, 12, 13])
def test_n_workers_equal_one_worker(n):
    ref = single_process_reference()
    m1, r1 = run(1)
    mn, rn = run(n)
    again, _ = run(n)
    assert again.params.tobytes() == mn.params.tobytes()       # fixed N: bit-identical
    np.testing.assert_allclose(m1.params, ref.params, rtol=0, atol=1e-6)
    np.testing.assert_allclose(mn.params, m1.params, rtol=0, atol=1e-6)
    assert np.abs(mn.params - Model(CFG, seed=0).params).max() > 1e-3   # it did train
    for a, b in zip(r1, rn):
        assert a.loss == pytest.approx(b.loss, rel=1e-5)
        assert a.grad_norm == pytest.approx(b.grad_norm, rel=1e-4)
        assert a.tokens == b.tokens and not b.skipped


@pytest.mark.parametrize("n", [2, 5])
def test_fixed_worker_count_is_bit_identical(n):
    a, ra = run(n, tcfg=TrainConfig(lr=1e-2, warmup_steps=2))
    b, rb = run(n, tcfg=TrainConfig(lr=1e-2, warmup_steps=2))
    assert a.params.tobytes() == b.params.tobytes()
    assert [r.loss for r in ra] == [r.loss for r in rb]


def test_uneven_batches_empty_microbatches_and_more_workers_than_sequences():
    kw = dict(B=3, ignore_rows=(1,))
    ref = single_process_reference(**kw)
    m, res = run(8, **kw)
    np.testing.assert_allclose(m.params, ref.params, rtol=0, atol=1e-6)
    assert all(r.tokens == 2 * 12 for r in res)


def test_global_batch_without_targets_is_skipped_not_applied():
    m = Model(CFG, seed=0)
    before = m.params.copy()
    with ThreadedTrainingSystem(m, SGD, n_workers=2) as s:
        r = s.train_step(*data(B=2, ignore_rows=(0, 1)))
    assert r.skipped and r.reason == "no valid targets" and r.loss == 0.0
    assert m.params.tobytes() == before.tobytes()


def test_worker_exception_surfaces_quickly_and_threads_are_joined(monkeypatch):
    m = Model(CFG, seed=0)
    before = m.params.copy()
    real = m.forward_backward
    baseline = threading.active_count()

    def faulty(ws, x, y, grad, scale=None, crystalline_weight=0.0):
        if threading.current_thread().name == "cllm-sphere-1":
            raise RuntimeError("injected fault in sphere 1")
        return real(ws, x, y, grad, scale, crystalline_weight)

    monkeypatch.setattr(m, "forward_backward", faulty)
    s = ThreadedTrainingSystem(m, SGD, n_workers=3, watchdog_timeout=30)
    t0 = time.perf_counter()
    with pytest.raises(WorkerError) as e:
        s.train_step(*data())
    assert time.perf_counter() - t0 < 10.0      # long before the 30 s watchdog would
    assert "injected fault in sphere 1" in str(e.value) and "Traceback" in str(e.value)
    assert m.params.tobytes() == before.tobytes()          # the model is unchanged
    s.close()
    assert s.threads_alive() == 0
    assert threading.active_count() == baseline
    with pytest.raises(WorkerError):
        s.train_step(*data())


def test_worker_exception_in_the_update_phase_rolls_the_step_back(monkeypatch):
    """Sphere 1 fails while updating its segment after sphere 0 has updated its own: the
    parameters and AdamW moments are restored to what they were before the step."""
    adam = TrainConfig(lr=1e-2, warmup_steps=0)
    m = Model(CFG, seed=0)
    s = ThreadedTrainingSystem(m, adam, n_workers=3, watchdog_timeout=30)
    try:
        for i in range(2):
            s.train_step(*data(seed=i))
        opt = s.optimizer
        before = [m.params.copy(), opt.m.copy(), opt.v.copy()]
        t_before = opt.t
        real = opt.update_segment
        sphere0_done = threading.Event()

        def faulty(params, grad, lo, hi, hyper, grad_scale):
            name = threading.current_thread().name
            if name == "cllm-sphere-1":
                assert sphere0_done.wait(10)
                raise RuntimeError("injected fault while updating")
            real(params, grad, lo, hi, hyper, grad_scale)
            if name == "cllm-sphere-0":
                sphere0_done.set()

        monkeypatch.setattr(opt, "update_segment", faulty)
        with pytest.raises(WorkerError, match="injected fault while updating"):
            s.train_step(*data(seed=5))
        assert sphere0_done.is_set()                       # a segment had been updated ...
        after = [m.params, opt.m, opt.v]
        assert all(a.tobytes() == b.tobytes() for a, b in zip(after, before))   # ... and undone
        assert opt.t == t_before
    finally:
        s.close()
    assert s.threads_alive() == 0


def test_stuck_worker_trips_the_watchdog(monkeypatch):
    m = Model(CFG, seed=0)
    real = m.forward_backward
    release = threading.Event()

    def stuck(ws, x, y, grad, scale=None, crystalline_weight=0.0):
        if threading.current_thread().name == "cllm-sphere-0":
            release.wait(30)
        return real(ws, x, y, grad, scale, crystalline_weight)

    monkeypatch.setattr(m, "forward_backward", stuck)
    s = ThreadedTrainingSystem(m, SGD, n_workers=2, watchdog_timeout=0.5)
    with pytest.raises(WatchdogTimeout, match="0 \\(forward/backward\\)"):
        s.train_step(*data())
    release.set()
    s.close()
    assert s.threads_alive() == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("where", ["grad", "loss"])
def test_non_finite_values_skip_the_step(monkeypatch, bad, where):
    m = Model(CFG, seed=0)
    tcfg = TrainConfig(lr=1e-2, warmup_steps=0)
    real = m.forward_backward
    calls = {"n": 0}

    def poisoned(ws, x, y, grad, scale=None, crystalline_weight=0.0):
        loss, n = real(ws, x, y, grad, scale, crystalline_weight)
        if threading.current_thread().name == "cllm-sphere-1":
            calls["n"] += 1
            if calls["n"] == 2:           # poison the second step only
                if where == "grad":
                    grad[123] = bad
                else:
                    loss = bad
        return loss, n

    monkeypatch.setattr(m, "forward_backward", poisoned)
    with ThreadedTrainingSystem(m, tcfg, n_workers=3) as s:
        r1 = s.train_step(*data(seed=0))
        p, mom, v = m.params.copy(), s.optimizer.m.copy(), s.optimizer.v.copy()
        r2 = s.train_step(*data(seed=1))
        assert r2.skipped and "non-finite" in r2.reason
        assert m.params.tobytes() == p.tobytes()
        assert s.optimizer.m.tobytes() == mom.tobytes() and s.optimizer.v.tobytes() == v.tobytes()
        assert s.optimizer.t == 1 and s.skipped == 1
        r3 = s.train_step(*data(seed=2))
        assert not r1.skipped and not r3.skipped and np.isfinite(m.params).all()
        assert s.topology()["skipped"] == 1


def test_sixteen_workers_oversubscribed_train_correctly():
    tcfg = TrainConfig(lr=3e-3, warmup_steps=0)
    m1 = Model(CFG, seed=0)
    m16 = Model(CFG, seed=0)
    x, y = data(B=16, T=16, seed=3)
    with ThreadedTrainingSystem(m1, SGD, n_workers=1) as a, \
            ThreadedTrainingSystem(m16, SGD, n_workers=16) as b:
        losses = []
        for _ in range(6):
            a.train_step(x, y)
            losses.append(b.train_step(x, y).loss)
    assert losses[-1] < losses[0]
    np.testing.assert_allclose(m16.params, m1.params, rtol=0, atol=1e-6)
    topo = b.topology()
    assert topo["workers"] == 16 and len(topo["children"]) == 12
    assert sum(len(c["children"]) for c in topo["children"]) == 4
    assert all(c["batches"] == 6 and c["busy_s"] > 0 for c in topo["children"])


def test_hierarchy_is_one_plus_twelve_plus_one_hundred_forty_four():
    sp = build_hierarchy(156)
    assert [s.level for s in sp].count(1) == 12 and [s.level for s in sp].count(2) == 144
    assert all(s.position == s.id % 12 for s in sp)
    assert all(len(s.children) == 12 for s in sp[:12])
    assert sp[12].parent == 0 and sp[23].parent == 0 and sp[24].parent == 1
    deeper = build_hierarchy(157)
    assert deeper[156].level == 3 and deeper[156].parent == 12


def test_an_interrupt_in_node_zero_releases_every_worker(monkeypatch):
    """Ctrl-C while Node Zero waits at a barrier: the barriers are aborted, so the workers
    leave at once and close() has nothing to wait for."""
    import signal

    main = threading.main_thread().ident
    assert threading.get_ident() == main            # the interrupt goes to this thread
    m = Model(CFG, seed=0)
    real = m.forward_backward
    interrupted = threading.Event()

    def slow(ws, x, y, grad, scale=None, crystalline_weight=0.0):
        if threading.current_thread().name == "cllm-sphere-0" and not interrupted.is_set():
            interrupted.set()
            signal.pthread_kill(main, signal.SIGINT)   # Ctrl-C, delivered to Node Zero
            time.sleep(0.5)                   # (test only) keep this worker busy meanwhile
        return real(ws, x, y, grad, scale, crystalline_weight)

    monkeypatch.setattr(m, "forward_backward", slow)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)   # Python's Ctrl-C
    s = ThreadedTrainingSystem(m, SGD, n_workers=3, watchdog_timeout=60)
    try:
        with pytest.raises(KeyboardInterrupt):
            s.train_step(*data())
    finally:
        signal.signal(signal.SIGINT, previous)
    for t in s._threads:                      # they return by themselves: barriers aborted
        t.join(20)
    assert s.threads_alive() == 0
    s.close()
    with pytest.raises(WorkerError):
        s.train_step(*data())


@pytest.mark.parametrize("n", [1, 2, 7, 13])
def test_a_fault_in_the_step_decision_surfaces_with_its_traceback(monkeypatch, n):
    """Issue 14 item 7: the clip/skip decision runs as the Point C barrier action, on
    whichever thread arrives last. Its exception must reach the caller with its traceback,
    for any worker count and whoever ran it, never as a watchdog timeout."""
    def faulty_decision(self):
        raise ValueError("injected fault in the step decision")

    monkeypatch.setattr(ThreadedTrainingSystem, "_node_zero_decide", faulty_decision)
    for repeat in range(5):
        m = Model(CFG, seed=0)
        before = m.params.copy()
        s = ThreadedTrainingSystem(m, SGD, n_workers=n, watchdog_timeout=5.0)
        try:
            with pytest.raises(WorkerError) as e:
                s.train_step(*data(seed=repeat))
        finally:
            s.close()
        assert not isinstance(e.value, WatchdogTimeout)
        assert isinstance(e.value.__cause__, ValueError)
        assert "injected fault in the step decision" in str(e.value)
        assert "Traceback" in str(e.value) and "faulty_decision" in str(e.value)
        assert m.params.tobytes() == before.tobytes()
        assert s.threads_alive() == 0
