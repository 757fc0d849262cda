"""The server's memory ledger: passes of several sessions wait in order for the server's budget, a pass
larger than the whole budget is refused before it allocates, and a gone session's work stops."""

import threading

import pytest

from gradviz.errors import GradvizError
from gradviz.runtime import ledger as ledger_mod
from gradviz.runtime.ledger import Ledger, PassStopped, admit, checkpoint, give_back, serving, server_ledger

WAIT = 30  # seconds an event may take before the test fails (never reached when the ledger works)


def _start(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_two_passes_over_the_budget_run_one_after_the_other():
    ledger = Ledger(4096, "test budget")
    log, messages = [], []
    a_in, a_go, b_waits = threading.Event(), threading.Event(), threading.Event()

    def first():
        with ledger.reserve(3174, "first"):
            log.append("first in")
            a_in.set()
            a_go.wait(WAIT)
            log.append("first out")

    def second():
        def notify(text):
            messages.append(text)
            b_waits.set()

        with ledger.reserve(2048, "second", notify=notify):
            log.append("second in")
        log.append("second out")

    t1 = _start(first)
    assert a_in.wait(WAIT)
    t2 = _start(second)
    assert b_waits.wait(WAIT)  # the second pass says it waits, and does not run beside the first
    assert log == ["first in"] and ledger.waiting == 1 and ledger.in_use_mb == 3174
    assert messages[0].startswith("waiting: 0 passes ahead, 3.1 GB in use of 4 GB")
    a_go.set()
    t1.join(WAIT), t2.join(WAIT)
    assert log == ["first in", "first out", "second in", "second out"]
    assert messages[-1] == ""  # the message is cleared once the pass runs
    assert ledger.in_use_mb == 0 and ledger.waiting == 0 and ledger.peak_mb == 3174


def test_waiting_passes_run_in_order_of_arrival():
    ledger = Ledger(4096, "test budget")
    order, waiting = [], {name: threading.Event() for name in ("big", "small")}
    texts: dict[str, str] = {}

    def run(name, mb):
        def notify(text):
            if text:
                texts[name] = text
                waiting[name].set()

        with ledger.reserve(mb, name, notify=notify):
            order.append(name)

    held = ledger.acquire(3000, "running")
    t_big = _start(lambda: run("big", 2000))
    assert waiting["big"].wait(WAIT)
    t_small = _start(lambda: run("small", 500))  # would fit now, but arrives behind "big"
    assert waiting["small"].wait(WAIT)
    assert texts["small"].startswith("waiting: 1 pass ahead,") and order == []
    ledger.release(held)
    t_big.join(WAIT), t_small.join(WAIT)
    assert order == ["big", "small"]


def test_the_queue_is_bounded_one_more_waiting_pass_is_refused_at_once():
    ledger = Ledger(1000, "test budget", max_waiting=1)
    held = ledger.acquire(900, "running")
    waiting = threading.Event()
    done: list[str] = []

    def wait_in_line():
        with ledger.reserve(500, "first in line", notify=lambda text: text and waiting.set()):
            done.append("first in line")

    thread = _start(wait_in_line)
    assert waiting.wait(WAIT) and ledger.waiting == 1
    with pytest.raises(GradvizError, match=r"server is busy \(1 pass waits for memory, 0.9 GB in use of 1 GB\)"):
        ledger.acquire(10, "one too many")
    assert ledger.waiting == 1  # the refused pass never joined the queue
    ledger.release(held)
    thread.join(WAIT)
    assert done == ["first in line"] and ledger.in_use_mb == 0


def test_a_pass_larger_than_the_server_budget_is_refused_before_it_runs():
    ledger = Ledger(4096, "GRADVIZ_SERVER_MEMORY_MB")
    ran = []
    with pytest.raises(GradvizError) as err:
        with ledger.reserve(5000, "scoring"):
            ran.append(True)  # the pass's allocations would start here
    assert not ran and ledger.waiting == 0 and ledger.in_use_mb == 0
    text = str(err.value)
    assert "'scoring' needs ~5,000 MB" in text and "4,096 MB" in text and "GRADVIZ_SERVER_MEMORY_MB" in text


def test_a_failing_pass_gives_its_memory_back():
    ledger = Ledger(1000, "test budget")
    with pytest.raises(RuntimeError):
        with ledger.reserve(900, "fails"):
            raise RuntimeError("boom")
    assert ledger.in_use_mb == 0
    with ledger.reserve(900, "next"):  # would wait forever if the failed pass still held its 900 MB
        assert ledger.in_use_mb == 900


def test_a_waiting_pass_of_a_gone_session_leaves_the_queue():
    ledger = Ledger(1000, "test budget", poll_s=0.01)
    held = ledger.acquire(800, "running")
    gone = threading.Event()
    outcome = []

    def waiter():
        try:
            with ledger.reserve(500, "closed tab", should_stop=gone.is_set, notify=lambda text: None):
                outcome.append("ran")
        except PassStopped as exc:
            outcome.append(str(exc))

    thread = _start(waiter)
    gone.set()
    thread.join(WAIT)
    assert outcome and "stopped" in outcome[0] and ledger.waiting == 0
    ledger.release(held)


def test_a_pass_that_waits_too_long_is_refused_with_the_numbers():
    ticks = iter(range(0, 10_000, 5))
    ledger = Ledger(1000, "test budget", max_wait_s=20, poll_s=0.001, clock=lambda: float(next(ticks)))
    held = ledger.acquire(800, "running")
    with pytest.raises(GradvizError, match=r"waited 20 s for memory.*0.8 GB in use of 1 GB"):
        ledger.acquire(500, "late")
    assert ledger.waiting == 0
    ledger.release(held)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("GRADVIZ_SERVER_MEMORY_MB", "1000")
    monkeypatch.setattr(ledger_mod, "_LEDGERS", {})
    return server_ledger()


def test_a_scope_holds_its_largest_plan_until_it_ends(server):
    assert server.budget_mb == 1000 and server.source == "GRADVIZ_SERVER_MEMORY_MB"
    admit(300, "outside any scope")  # the command line: nothing reserved
    assert server.in_use_mb == 0
    with serving():
        admit(300, "fit")
        admit(100, "smaller pass")
        assert server.in_use_mb == 300
        admit(600, "scoring")
        assert server.in_use_mb == 600
        with serving():  # a nested scope gives its parent's reservation back first
            admit(50, "stroke")
            assert server.in_use_mb == 50
        assert server.in_use_mb == 0
    assert server.in_use_mb == 0
    with pytest.raises(GradvizError, match="more than this server's whole memory budget"):
        with serving():
            admit(1500, "resnet50 at 224²")


def test_a_scope_about_to_wait_on_other_work_gives_its_memory_back(server):
    give_back()  # outside a scope: nothing held, nothing to do
    with serving():
        admit(600, "scoring")
        give_back()  # e.g. before a page waits for the server's warm-up, whose passes may need this memory
        assert server.in_use_mb == 0
        admit(100, "the next pass")  # reserves again, only what it plans
        assert server.in_use_mb == 100
    assert server.in_use_mb == 0


def test_checkpoint_stops_the_work_of_a_gone_session(server):
    gone = []
    checkpoint()  # outside a scope: nothing to stop
    with serving(should_stop=lambda: bool(gone)):
        checkpoint()
        admit(100, "first batch")
        gone.append(True)  # the tab is closed
        with pytest.raises(PassStopped, match="browser tab"):
            checkpoint()
        with pytest.raises(PassStopped):
            admit(200, "next pass")
    assert server.in_use_mb == 0


# --- the planner and the ledger together (what a web session's passes do) ----------------------------------

def _scorer(methods):
    from gradviz.methods.registry import resolve_methods
    from gradviz.models import load_model
    from gradviz.scoring import make_runners

    model = load_model("mnist-cnn")
    return model, make_runners(model, resolve_methods(methods), {}, "mnist:train", 0)


def _real_forwards(model) -> list[int]:
    """Batch sizes of the real (not fake-tensor) forwards of ``model`` from now on."""
    from torch._subclasses.fake_tensor import FakeTensor

    seen: list[int] = []
    model.register_forward_pre_hook(
        lambda _m, args: None if isinstance(args[0], FakeTensor) else seen.append(int(args[0].shape[0])))
    return seen


def test_a_web_pass_over_the_server_budget_is_refused_before_it_allocates(server):
    import contextvars

    import torch

    from gradviz.runtime.budget import session_budget
    from gradviz.scoring import score_images

    model, runners = _scorer(["msp", "grad_l2"])
    seen = _real_forwards(model)

    def web_pass():
        with session_budget(4096), serving():  # the session could, the server (1,000 MB) could not
            score_images(model, torch.rand(16, 1, 28, 28), runners)

    server.budget_mb = 60.0  # below a gradient pass's fixed part on mnist-cnn
    with pytest.raises(GradvizError) as err:
        contextvars.copy_context().run(web_pass)
    text = str(err.value)
    assert "one image does not fit the memory budget for 'scoring'" in text
    assert "budget is 60 MB (the server's budget for all sessions (GRADVIZ_SERVER_MEMORY_MB))" in text
    assert seen == [] and server.in_use_mb == 0  # refused before any real forward


def test_a_web_pass_reserves_its_plan_while_it_runs(server):
    import contextvars

    import torch

    from gradviz.runtime.budget import plan_batch, session_budget
    from gradviz.scoring import score_images

    model, runners = _scorer(["msp", "grad_l2"])
    held = []

    def web_pass():
        with session_budget(4096), serving():
            score_images(model, torch.rand(24, 1, 28, 28), runners,
                         progress=lambda done, total, label: held.append(server.in_use_mb))
        held.append(server.in_use_mb)

    contextvars.copy_context().run(web_pass)
    plan = plan_batch(model, "gradients", "scoring", n=24, budget_mb=1000)
    assert held[0] == pytest.approx(plan.total_mb) and 0 < plan.total_mb <= 1000
    assert set(held[:-1]) == {held[0]} and held[-1] == 0  # held during every batch, given back afterwards


def test_a_closed_tabs_scoring_stops_at_its_next_batch(server):
    import torch

    from gradviz.runtime.progress import report, reporting
    from gradviz.scoring import score_images

    model, runners = _scorer(["msp"])
    seen = _real_forwards(model)
    gone, batches = [], []

    def progress(done, total, label):  # what the page's progress bar does first (gradviz.ui.progress.progress_bar)
        checkpoint()
        batches.append(done)
        if done == 2:
            gone.append(True)  # the browser tab is closed after the second batch

    with serving(should_stop=lambda: bool(gone)):
        with pytest.raises(PassStopped):
            score_images(model, torch.rand(64, 1, 28, 28), runners, batch_size=8, progress=progress)
        assert batches == [0, 1, 2] and len(seen) == 2  # 2 of the 8 batches ran; the third never started
        with reporting(lambda *a: None, "fitting"), pytest.raises(PassStopped):
            report(1, 10)  # a fit pass's batches stop the same way
    assert server.in_use_mb == 0


def test_own_id_sets_are_taken_from_the_sessions_budget():
    import contextvars

    from gradviz.runtime.budget import memory_budget_mb, set_session_budget

    def planned(held):
        set_session_budget(2048, held_mb=held)
        return memory_budget_mb()

    assert contextvars.copy_context().run(planned, 0) == (2048, "this session's budget (GRADVIZ_SESSION_MEMORY_MB)")
    mb, source = contextvars.copy_context().run(planned, 700)
    assert mb == 1348 and "less 700 MB of its own ID sets" in source


# --- CPU time: a session's budget over a sliding window ----------------------------------------------------

def test_cpu_account_counts_the_window_and_says_when_to_go_on():
    now = [0.0]
    account = ledger_mod.CpuAccount(8, window_s=900, clock=lambda: now[0])
    account.charge(5)
    now[0] = 100.0
    account.charge(5)
    assert account.used_s() == 10
    with pytest.raises(ledger_mod.CpuBudgetExceeded, match=r"took 10 s of CPU time in the last 15 minutes, more "
                                                           r"than its 8 s \(GRADVIZ_SESSION_CPU_S\).*about 13 min"):
        account.check()
    now[0] = 900.0  # the first charge has left the window
    assert account.used_s() == 5
    account.check()


def test_nested_scopes_charge_the_sessions_cpu_time_once(monkeypatch):
    cpu = [0.0]
    monkeypatch.setattr(ledger_mod.time, "thread_time", lambda: cpu[0])
    account = ledger_mod.CpuAccount(100)
    with serving(cpu=account):
        cpu[0] = 2.0
        with serving():  # inherits the account
            cpu[0] = 5.0
        cpu[0] = 6.0
    assert account.used_s() == 6.0


def test_a_session_over_its_cpu_budget_stops_between_batches_and_is_refused_until_the_window_passes(
        server, monkeypatch):
    import torch

    from gradviz.scoring import score_images

    model, runners = _scorer(["msp"])
    seen = _real_forwards(model)
    cpu, now = [0.0], [0.0]
    real_forward = model.forward

    def forward(x, *args, **kwargs):  # every real forward of the model costs one CPU second (not the planner's)
        from torch._subclasses.fake_tensor import FakeTensor

        cpu[0] += 0.0 if isinstance(x, FakeTensor) else 1.0
        return real_forward(x, *args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    monkeypatch.setattr(ledger_mod.time, "thread_time", lambda: cpu[0])
    account = ledger_mod.CpuAccount(2.5, clock=lambda: now[0])
    with serving(cpu=account), pytest.raises(ledger_mod.CpuBudgetExceeded, match="GRADVIZ_SESSION_CPU_S"):
        score_images(model, torch.rand(64, 1, 28, 28), runners, batch_size=8)
    assert len(seen) == 3  # three batches took the 2.5 s; the fourth never started
    assert server.in_use_mb == 0
    with pytest.raises(ledger_mod.CpuBudgetExceeded, match="Try again in about 15 min"):
        with serving(cpu=account):
            pass  # refused at once: nothing runs
    now[0] = ledger_mod.CPU_WINDOW_S + 1
    with serving(cpu=account):
        score_images(model, torch.rand(8, 1, 28, 28), runners, batch_size=8)
    assert len(seen) == 4
