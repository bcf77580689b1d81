"""The throttled progress bar (tasks/core/progress.py): counts from many threads, sends at most one update per
interval, never blocks or fails the run, and its last state says how the run ended."""

import threading
import time

import pytest

from tasks.core.progress import PROGRESS_ENV, Progress, track_progress


class Recorder:
    """A sender that records what it was given and when (monotonic)."""

    def __init__(self, fail: bool = False, block: threading.Event | None = None):
        self.states, self.at, self.fail, self.block = [], [], fail, block

    def __call__(self, state):
        if self.block is not None:
            self.block.wait()
        self.at.append(time.monotonic())
        self.states.append(state)
        if self.fail:
            raise ConnectionError("API down")


def test_updates_are_throttled_to_one_per_interval_and_the_last_state_is_exact():
    rec = Recorder()
    interval = 0.2
    with track_progress("vacuum-progress-x", 3000, "Vacuum of x", "tables", send=rec,
                        min_interval=interval) as bar:
        workers = [threading.Thread(target=lambda: [(bar.advance(1, f"t{i}"), time.sleep(0.0002))
                                                    for i in range(1000)]) for _ in range(3)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    during = rec.at[:-1]  # the final state is sent at once on close, not throttled
    gaps = [b - a for a, b in zip(during, during[1:], strict=False)]
    assert all(g >= interval for g in gaps), gaps
    final = rec.states[-1]
    assert (final.done, final.total, final.percent) == (3000, 3000, 100.0)
    assert final.description().startswith("**Vacuum of x**: 3000 of 3000 tables (100 %)")
    assert "finished: 3000 of 3000 tables" in final.description()
    assert rec.states[0].done < 3000  # the bar showed work in progress, not only the end


def test_advance_never_waits_for_a_slow_api():
    gate = threading.Event()
    rec = Recorder(block=gate)  # the first send hangs until released
    bar = Progress("k", 100, "T", send=rec, min_interval=0.05).start()
    for i in range(100):
        bar.advance(1, f"item {i}", "vacuumed")  # returns although the sender is stuck
    assert bar.done == 100
    gate.set()
    bar.close("finished")
    assert rec.states[-1].counts == {"vacuumed": 100} and rec.states[-1].outcome == "finished"


def test_an_api_failure_never_fails_the_run():
    rec = Recorder(fail=True)
    with track_progress("k", 10, "T", send=rec, min_interval=0.01) as bar:
        for _ in range(10):
            bar.advance()
    assert rec.states  # it tried, failed, and the block completed


def test_a_failure_or_cancellation_leaves_the_bar_where_the_run_stopped():
    rec = Recorder()
    with pytest.raises(RuntimeError), track_progress("k", 10, "Index maintenance", "indexes", send=rec) as bar:
        bar.advance(1, "public.i1")
        bar.advance(1, "public.i2")
        raise RuntimeError("connection lost")
    last = rec.states[-1]
    assert last.done == 2 and last.percent == 20.0
    assert "stopped: the run failed (RuntimeError: connection lost) after 2 of 10 indexes" in last.description()

    class Cancelled(BaseException):  # what Prefect raises in a run cancelled by SIGTERM (TerminationSignal)
        pass

    rec = Recorder()
    with pytest.raises(Cancelled), track_progress("k", 10, "Vacuum", "tables", send=rec) as bar:
        bar.advance(3, "public.t3")
        raise Cancelled()
    assert "cancelled or interrupted" in rec.states[-1].description() and rec.states[-1].done == 3


def test_an_explicit_outcome_wins_and_progress_can_be_turned_off(monkeypatch):
    rec = Recorder()
    with track_progress("k", 10, "Vacuum", "tables", send=rec) as bar:
        bar.advance(4)
        bar.close("stopped: the maintenance window ended; 6 tables not started")
    assert rec.states[-1].outcome == "stopped: the maintenance window ended; 6 tables not started"
    assert len([s for s in rec.states if s.outcome]) == 1  # closing twice sends once

    monkeypatch.setenv(PROGRESS_ENV, "off")
    with track_progress("k", 10, "Vacuum", "tables", send=rec) as bar:
        assert bar is None
    monkeypatch.delenv(PROGRESS_ENV)
    with track_progress("k", 0, "Vacuum", "tables", send=rec) as bar:
        assert bar is None  # nothing to count: no bar


def test_closing_without_waiting_returns_at_once_and_the_final_state_still_arrives():
    gate = threading.Event()
    rec = Recorder(block=gate)  # the API hangs until released
    bar = Progress("k", 5, "Switchover of x", "steps", send=rec, min_interval=0.05).start()
    bar.set(3, "fence on primary: done")
    bar.close("stopped at step lsn-gate on replica: timeout", wait=False)  # the failover's undo goes on first
    assert not rec.states  # nothing sent yet: the caller did not wait
    gate.set()
    bar.join()
    assert rec.states[-1].outcome == "stopped at step lsn-gate on replica: timeout" and rec.states[-1].done == 3
