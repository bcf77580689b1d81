"""Benchmark: switchover, or crash failover, under steady write load through pgbouncer.

switchover (default): the flow vs the bare sequence. Reference: the bare scripted sequence
(CHECKPOINT, PAUSE, fast stop, LSN gate, pg_promote, repoint, RESUME) run directly with psycopg and
pg_ctl, no Prefect. Five runs each on one sandbox; medians of the write gap (longest gap between
acknowledged commits of a writer process of its own), the flow's write_pause_ms (PAUSE to RESUME), client
errors, acknowledged rows lost, time from the call to the verified new primary and to the return, and the
flow's phase-2 step timings; then Patroni 4.1's REST `POST /switchover` on a 2-node Patroni cluster of its own,
under the same kind of writer (libpq multi-host), as many runs; then the ratios: write gap flow/bare (goal <= 1.2)
and total flow/Patroni's call (goal <= 1.0; with --no-patroni, or when Patroni cannot start, against
PATRONI_REST_SWITCHOVER_S measured earlier on this machine).

crash: the primary's postmaster is killed (immediate stop) under writers, then the failover flow
runs at once, through a pgbouncer with its DEFAULT settings (server_login_retry 15 s). Per run: time
from the kill to the first acknowledged write on the new primary, acknowledged rows lost, and the
LSN gap the report states, side by side with two references: the flow through the sandbox's tuned
pgbouncer (server_login_retry = 1), and the bare crash sequence (PAUSE, pg_promote, repoint, RELOAD,
RESUME: what the runbook did before it lifted server_login_retry) on the default pgbouncer.

patroni: our native switchover (sandbox) vs our switchover delegated to a real Patroni (pgbouncer PAUSE/RESUME)
vs Patroni's bare REST call with libpq multi-host clients (target_session_attrs=read-write), same writer: longest
write gap, client errors, acknowledged rows lost, call → first write after the gap. Reference: the bare call.
With --timeline, each delegated run is also printed as a timeline (ms from the writer's last write before the
gap): our phase-2 steps, Patroni's and PostgreSQL's log lines of both nodes, pgbouncer's PAUSE/RELOAD/RESUME.

    ./run bench failover [--runs 5] [--no-patroni] [--scenario crash|patroni [--timeline]]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import psycopg  # noqa: E402

from blocks.postgres_cluster import PostgresCluster  # noqa: E402
from sandbox.blocks import save_failover_blocks  # noqa: E402
from sandbox.cluster import Sandbox  # noqa: E402
from tasks.failover.endpoint import repoint, rewrite_ini  # noqa: E402
from tasks.failover.node_control import parse_controldata  # noqa: E402
from tasks.failover.plan import lsn_int  # noqa: E402

BLOCK = "bench-failover"
# Patroni 4.1.5's REST POST /switchover on this machine (2 nodes, PostgreSQL 15): the call returned after ~2.1 s
# (/work/shared/FACTS.md; `--scenario patroni` measures Patroni side by side with the flow).
PATRONI_REST_SWITCHOVER_S = 2.1


class Writer(threading.Thread):
    """Commits numbered rows through pgbouncer; records each acknowledged commit and its time."""

    def __init__(self, box: Sandbox, connect=None):
        super().__init__(daemon=True)
        self.box, self.stop_event = box, threading.Event()
        self.connect = connect or (lambda: box.connect("pgbouncer"))
        self.acked: list[tuple[int, float]] = []
        self.errors = 0
        self.base = int(time.time() * 1000) % 1_000_000 * 1000

    def run(self) -> None:
        conn = None
        n = self.base
        while not self.stop_event.is_set():
            n += 1
            try:
                conn = conn or self.connect()
                conn.execute("INSERT INTO public.bench_writes (n) VALUES (%s)", (n,))
                self.acked.append((n, time.perf_counter()))
            except psycopg.Error:
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)
        if conn is not None:
            conn.close()


def _write_rows(conninfo: str, base: int, stop, out) -> None:
    """A client process: commits numbered rows until stopped; sends 'ready' after its first commit, then at the
    end (acknowledged (n, perf_counter) pairs, errors). perf_counter is CLOCK_MONOTONIC: one clock for all."""
    acked, errors, conn, n = [], 0, None, base
    while not stop.is_set():
        n += 1
        try:
            conn = conn or psycopg.connect(conninfo, autocommit=True, prepare_threshold=None, connect_timeout=5)
            conn.execute("INSERT INTO public.bench_writes (n) VALUES (%s)", (n,))
            acked.append((n, time.perf_counter()))
            if len(acked) == 1:
                out.send("ready")
        except psycopg.Error:
            errors += 1
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.01)
    out.send((acked, errors))


class ProcessWriter:
    """The Writer as a process of its own: application clients never share the runbook's interpreter (its GIL),
    for the flow and the bare sequence alike."""

    def __init__(self, conninfo: str):
        import multiprocessing

        mp = multiprocessing.get_context("spawn")
        self.base = int(time.time() * 1000) % 1_000_000 * 1000
        self.stop_event = mp.Event()
        self._recv, send = mp.Pipe(duplex=False)
        self._proc = mp.Process(target=_write_rows, args=(conninfo, self.base, self.stop_event, send), daemon=True)
        self.acked: list[tuple[int, float]] = []
        self.errors = 0

    def start(self) -> None:
        self._proc.start()
        if not self._recv.poll(60) or self._recv.recv() != "ready":
            raise RuntimeError("the writer process did not commit within 60 s")

    def join(self, timeout: float) -> None:
        if self._recv.poll(timeout):
            self.acked, self.errors = self._recv.recv()
        self._proc.join(timeout)


def roles(box: Sandbox) -> tuple[str, str]:
    for node in ("primary", "replica"):
        try:
            with box.connect(node) as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return node, ("replica" if node == "primary" else "primary")
        except psycopg.OperationalError:
            pass
    raise RuntimeError("no primary")


def bare_switchover(box: Sandbox, old: str, new: str) -> None:
    """The reference: the zero-loss sequence with nothing around it."""
    with box.connect(old) as conn:
        conn.execute("CHECKPOINT")
    admin = psycopg.connect(host="127.0.0.1", port=box.config.pgbouncer_port, user="postgres", dbname="pgbouncer",
                            password=box.config.password, autocommit=True, prepare_threshold=None)
    admin.execute("PAUSE")
    box.stop_node(old, "fast")
    out = box.run_as_server_user([box.pg("pg_controldata"), str(box.node_dir(old))]).stdout
    goal = lsn_int(parse_controldata(out)["Latest checkpoint location"])
    with box.connect(new) as conn:
        while lsn_int(conn.execute("SELECT pg_last_wal_replay_lsn()::text").fetchone()[0]) <= goal:
            time.sleep(0.002)
        conn.execute("SELECT pg_promote(wait => false)")
        while conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
            time.sleep(0.005)
    ini = box.pgbouncer_ini
    ini.write_text(rewrite_ini(ini.read_text(), "127.0.0.1", box.node_port(new)))
    admin.execute("RELOAD")
    admin.execute("RESUME")
    admin.close()
    cluster = PostgresCluster.load(BLOCK)
    cluster.primary_node, cluster.fenced_nodes = new, [old]
    cluster.save(BLOCK, overwrite=True)


def bare_crash_failover(box: Sandbox, old: str, new: str, block: str) -> float:
    """The crash reference: PAUSE, promote, repoint, RELOAD, RESUME (no server_login_retry lift); when RESUME
    returned (epoch seconds)."""
    admin = psycopg.connect(host="127.0.0.1", port=box.config.pgbouncer_port, user="postgres", dbname="pgbouncer",
                            password=box.config.password, autocommit=True, prepare_threshold=None)
    admin.execute("PAUSE")
    with box.connect(new) as conn:
        conn.execute("SELECT pg_promote()")
    ini = box.pgbouncer_ini
    ini.write_text(rewrite_ini(ini.read_text(), "127.0.0.1", box.node_port(new)))
    admin.execute("RELOAD")
    admin.execute("RESUME")
    resumed = time.time()
    admin.close()
    cluster = PostgresCluster.load(block)
    cluster.primary_node, cluster.fenced_nodes = new, [old]
    cluster.save(block, overwrite=True)
    return resumed


def measure_crash(box: Sandbox, fail_over) -> dict:
    """Kill the primary under writers, fail over at once (fail_over returns the reported gap and when RESUME
    returned, epoch seconds): kill -> first acknowledged write, RESUME -> first write, rows lost, gap."""
    old, new = roles(box)
    writer = Writer(box)
    writer.start()
    time.sleep(1.0)
    box.stop_node(old, "immediate")
    killed = time.perf_counter()  # pg_ctl stop -m immediate returned: any later acknowledgement is the new primary's
    killed_wall = time.time()
    gap, resumed_wall = fail_over(old, new)
    deadline = time.perf_counter() + 60
    while not [t for _, t in writer.acked if t > killed] and time.perf_counter() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
    writer.stop_event.set()
    writer.join(10)
    first = min((t for _, t in writer.acked if t > killed), default=float("nan"))
    with box.connect(new) as conn:
        have = {r[0] for r in conn.execute("SELECT n FROM public.bench_writes WHERE n > %s", (writer.base,))}
    return {"write_back_s": first - killed, "after_resume_s": first - killed - (resumed_wall - killed_wall),
            "lost": len({n for n, _ in writer.acked} - have), "gap": gap, "errors": writer.errors}


def crash_main(runs: int) -> None:
    """Crash failover through a default pgbouncer: the flow vs the tuned pgbouncer and the bare sequence."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.failover import failover
    from flows.rejoin import rejoin
    from tasks.failover.model import FailoverRequest, RejoinRequest

    boxes = {"default": Sandbox.ephemeral("pgrb-bench-crash-default-", defaults=True),
             "tuned": Sandbox.ephemeral("pgrb-bench-crash-tuned-")}
    journal = tempfile.mkdtemp(prefix="pgrb-bench-journal-")
    kinds = (("flow, default pgbouncer", "default", "flow"), ("flow, tuned (retry=1)", "tuned", "flow"),
             ("bare, default pgbouncer", "default", "bare"))
    results: dict[str, list[dict]] = {k: [] for k, _, _ in kinds}
    try:
        with prefect_test_harness(server_startup_timeout=120):
            for which, box in boxes.items():
                box.start()
                with box.connect("primary") as conn:
                    conn.execute("CREATE TABLE public.bench_writes (n bigint PRIMARY KEY)")
                save_failover_blocks(box, f"{BLOCK}-{which}")  # once: the runs keep it on the current primary
            for i in range(runs):
                for kind, which, how in kinds:
                    box, block = boxes[which], f"{BLOCK}-{which}"
                    box.wait_streaming(roles(box)[0])

                    def via_flow(old, new, block=block):
                        report = failover(FailoverRequest(cluster_block=block, node_control_block=block,
                                                          endpoint_block=block, journal_dir=journal, mode="failover",
                                                          confirm_cluster=block))
                        assert report.status == "completed", report.summary
                        resumed = next(s.at for s in report.steps if s.step == "resume-endpoint" and s.status == "done")
                        return report.data_loss.gap_bytes, resumed.timestamp()

                    def bare(old, new, box=box, block=block):
                        return None, bare_crash_failover(box, old, new, block)

                    result = measure_crash(box, via_flow if how == "flow" else bare)
                    results[kind].append(result)
                    print(f"run {i + 1} {kind}: first write {result['write_back_s']:.2f} s after the kill, "
                          f"{result['after_resume_s']:.2f} s after RESUME, "
                          f"lost {result['lost']}, reported gap {result['gap']} bytes, client errors "
                          f"{result['errors']}", flush=True)
                    back = rejoin(RejoinRequest(cluster_block=block, node_control_block=block))
                    assert back.status == "completed", back.summary
    finally:
        for box in boxes.values():
            box.destroy()
    ref = statistics.median(r["write_back_s"] for r in results["flow, tuned (retry=1)"])
    print(f"\ncrash failover under writes through pgbouncer, {runs} runs each, medians (max)")
    print(f"{'':26}{'kill->write (s)':>17}{'ratio vs tuned':>16}{'RESUME->write (s)':>19}{'rows lost':>11}"
          f"{'gap (bytes)':>14}")
    for kind, _, _ in kinds:
        rs = results[kind]
        back = statistics.median(r["write_back_s"] for r in rs)
        after = statistics.median(r["after_resume_s"] for r in rs)
        gaps = [r["gap"] for r in rs if r["gap"] is not None]
        gap = f"{statistics.median(gaps):.0f} ({max(gaps)})" if gaps else "not measured"
        lost = f"{statistics.median(r['lost'] for r in rs):.0f} ({max(r['lost'] for r in rs)})"
        print(f"{kind:26}{back:>17.2f}{back / ref if ref else float('nan'):>16.2f}{after:>19.2f}{lost:>11}"
              f"{gap:>14}")


def measure(box: Sandbox, switch) -> dict:
    old, new = roles(box)
    writer = ProcessWriter(box.conninfo("pgbouncer"))
    writer.start()
    time.sleep(1.0)
    started, started_wall = time.perf_counter(), time.time()
    verified_wall = switch(old, new)  # the flow: when its verify-promotion step ended (epoch seconds)
    total = time.perf_counter() - started
    time.sleep(1.0)
    writer.stop_event.set()
    writer.join(10)
    times = [t for _, t in writer.acked]
    window = [(b - a, b) for a, b in zip(times, times[1:], strict=False) if b >= started - 0.5]
    gap, first = max(window, default=(0.0, started))
    with box.connect(new) as conn:
        have = {r[0] for r in conn.execute("SELECT n FROM public.bench_writes WHERE n > %s", (writer.base,))}
    lost = len({n for n, _ in writer.acked} - have)
    return {"pause_s": gap, "first_write_s": first - started, "errors": writer.errors, "lost": lost,
            "total_s": total, "acked": len(writer.acked),
            "verified_s": (verified_wall - started_wall) if verified_wall else None}


def measure_patroni(patroni, switch, connect) -> dict:
    """One switchover of the Patroni cluster under a writer (through `connect`): the longest write gap, client
    errors, acknowledged rows lost, and the time from the call to the first write after that gap."""
    old = patroni.leader()
    new = next(n for n in patroni.names if n != old)
    writer = Writer(patroni, connect)
    writer.start()
    time.sleep(1.0)
    started = time.perf_counter()
    switch(old, new)
    total = time.perf_counter() - started
    time.sleep(1.5)
    writer.stop_event.set()
    writer.join(10)
    times = [t for _, t in writer.acked]
    gaps = [(b - a, b) for a, b in zip(times, times[1:], strict=False) if b >= started]
    gap, first = max(gaps, default=(0.0, started))
    with patroni.connect(new) as conn:
        have = {r[0] for r in conn.execute("SELECT n FROM public.bench_writes WHERE n > %s", (writer.base,))}
    wall = time.time() - time.perf_counter()
    return {"pause_s": gap, "first_write_s": first - started, "errors": writer.errors,
            "lost": len({n for n, _ in writer.acked} - have), "total_s": total, "acked": len(writer.acked),
            "gap_wall": (first - gap + wall, first + wall)}


TIMELINE_LOG = ("INFO", "LOG:", "PAUSE", "RESUME", "RELOAD")


def print_timeline(patroni, report, gap_wall: tuple[float, float]) -> None:
    """One delegated run as a timeline, ms from the writer's last write before the gap: our phase-2 steps (start,
    end), every log line of Patroni, PostgreSQL (both nodes) and pgbouncer from 0.1 s before to 0.3 s after."""
    import re
    from datetime import datetime

    start, end = gap_wall
    events = [(start, "writer: last write before the gap"), (end, f"writer: first write after ({end - start:.3f} s)")]
    for s in report.steps:
        if s.phase == 2 and s.duration_ms is not None:
            done = s.at.timestamp()
            events += [(done - s.duration_ms / 1000, f"ours: {s.step} starts"), (done, f"ours: {s.step} ends")]
    stamp = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[.,]\d{3})")
    for log in [*(patroni.base / f"{n}.log" for n in patroni.names), *patroni.base.rglob("pgbouncer.log")]:
        for line in log.read_text(errors="replace").splitlines():
            m = stamp.match(line)
            if not m or not any(k in line for k in TIMELINE_LOG):
                continue
            at = datetime.strptime(m.group(1).replace(",", "."), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            if start - 0.1 <= at <= end + 0.3:
                events.append((at, f"{log.stem}: {line[m.end():].strip()[:140]}"))
    for at, what in sorted(events):
        print(f"  {(at - start) * 1000:7.0f} ms  {what}")


def patroni_rest_switchover(patroni, old: str, new: str) -> None:
    """Patroni's own switchover: POST /switchover {leader, candidate} to the candidate's REST API (returns done)."""
    import urllib.request

    req = urllib.request.Request(patroni.rest_url(new) + "/switchover", method="POST",
                                 data=f'{{"leader": "{old}", "candidate": "{new}"}}'.encode())
    with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback
        assert resp.status == 200


def multi_host_conninfo(patroni) -> str:
    """libpq multi-host over every Patroni node, read-write sessions only: how clients follow Patroni alone."""
    return psycopg.conninfo.make_conninfo(
        host=",".join("127.0.0.1" for _ in patroni.names),
        port=",".join(str(patroni.pg_ports[n]) for n in patroni.names),
        user="postgres", password=patroni.password, dbname="postgres", target_session_attrs="read-write")


def patroni_reference(runs: int) -> list[float] | None:
    """Patroni's bare REST switchover on a 2-node Patroni cluster, under a libpq multi-host writer: seconds from
    the call to its return, one per run (None when Patroni cannot start here: the figure is then the constant)."""
    from sandbox.patroni import PatroniSandbox

    patroni = PatroniSandbox(prefix="pgrb-bench-patroni-")
    totals = []
    try:
        patroni.start()
        with patroni.connect(patroni.leader()) as conn:
            conn.execute("CREATE TABLE public.bench_writes (n bigint PRIMARY KEY)")
        multi = multi_host_conninfo(patroni)
        for i in range(runs):
            patroni.wait_members()
            r = measure_patroni(patroni, lambda old, new: patroni_rest_switchover(patroni, old, new),
                                lambda: psycopg.connect(multi, autocommit=True, connect_timeout=5))
            totals.append(r["total_s"])
            print(f"run {i + 1} Patroni REST: call {r['total_s']:.2f} s, gap {r['pause_s'] * 1000:.0f} ms, errors "
                  f"{r['errors']}, lost {r['lost']} of {r['acked']}", flush=True)
    except Exception as exc:  # noqa: BLE001 - the reference falls back to the recorded figure
        print(f"Patroni reference not measured ({type(exc).__name__}: {str(exc)[:200]}); using "
              f"{PATRONI_REST_SWITCHOVER_S} s", flush=True)
        return None
    finally:
        patroni.destroy()
    return totals


def patroni_main(runs: int, timeline: bool = False) -> None:
    """Native switchover (sandbox, flow) vs the flow delegated to Patroni vs Patroni's bare REST call with libpq
    multi-host clients, each under the same writer."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.failover import failover
    from flows.rejoin import rejoin
    from sandbox.patroni import PatroniSandbox
    from tasks.failover.model import FailoverRequest, RejoinRequest

    box, patroni = Sandbox.ephemeral("pgrb-bench-failover-"), PatroniSandbox(prefix="pgrb-bench-patroni-")
    journal = tempfile.mkdtemp(prefix="pgrb-bench-journal-")
    results: dict[str, list[dict]] = {"native flow": [], "Patroni flow": [], "Patroni bare REST": []}
    step_ms: dict[str, list[float]] = {}
    reports: list = []
    try:
        box.start()
        patroni.start()
        patroni.start_pgbouncer()
        for conn in (box.connect("primary"), patroni.connect(patroni.leader())):
            with conn:
                conn.execute("CREATE TABLE public.bench_writes (n bigint PRIMARY KEY)")
        multi = multi_host_conninfo(patroni)
        with prefect_test_harness(server_startup_timeout=120):
            save_failover_blocks(box, BLOCK)

            def native(old, new):
                report = failover(FailoverRequest(cluster_block=BLOCK, node_control_block=BLOCK, endpoint_block=BLOCK,
                                                  journal_dir=journal, confirm_cluster=BLOCK))
                assert report.status == "completed", report.summary

            def delegated(old, new):
                name = "bench-patroni"
                patroni.cluster_block(name).save(name, overwrite=True)
                patroni.node_control_block("patroni").save(name, overwrite=True)
                patroni.endpoint_block().save(name, overwrite=True)
                report = failover(FailoverRequest(cluster_block=name, node_control_block=name, endpoint_block=name,
                                                  journal_dir=journal, confirm_cluster=name, candidate=new))
                assert report.status == "completed", report.summary
                for s in report.steps:
                    if s.phase == 2 and s.status == "done":
                        step_ms.setdefault(s.step, []).append(s.duration_ms)
                step_ms.setdefault("clients held (PAUSE..RESUME)", []).append(report.write_pause_ms)
                reports.append(report)

            def bare(old, new):
                patroni_rest_switchover(patroni, old, new)

            for i in range(runs):
                box.wait_streaming(roles(box)[0])
                results["native flow"].append(measure(box, native))
                rejoin(RejoinRequest(cluster_block=BLOCK, node_control_block=BLOCK))
                for kind, fn, connect in (("Patroni flow", delegated, lambda: patroni.connect("pgbouncer")),
                                          ("Patroni bare REST", bare,
                                           lambda: psycopg.connect(multi, autocommit=True, connect_timeout=5))):
                    patroni.wait_members()
                    if fn is delegated:  # the bare call left pgbouncer on the old leader: start where the runbook would
                        repoint(patroni.endpoint_block(), "127.0.0.1", patroni.pg_ports[patroni.leader()])
                    results[kind].append(measure_patroni(patroni, fn, connect))
                    if timeline and fn is delegated:
                        print(f"run {i + 1} Patroni flow, timeline:")
                        print_timeline(patroni, reports[-1], results[kind][-1]["gap_wall"])
                for kind in results:
                    r = results[kind][-1]
                    print(f"run {i + 1} {kind}: gap {r['pause_s'] * 1000:.0f} ms, errors {r['errors']}, lost "
                          f"{r['lost']} of {r['acked']}, call→first write {r['first_write_s']:.2f} s", flush=True)
    finally:
        box.destroy()
        patroni.destroy()
    print("\nPatroni flow phase 2, median ms per step:")
    for step, values in step_ms.items():
        print(f"  {step:32}{statistics.median(values):>8.0f}")
    ref = statistics.median(r["pause_s"] for r in results["Patroni bare REST"])
    print(f"\nswitchover under a writer, {runs} runs each, medians (reference: Patroni's bare REST call)")
    print(f"{'':20}{'write gap ms':>13}{'errors':>8}{'lost':>6}{'call→first write s':>20}{'gap/ref':>9}")
    for kind, rows in results.items():
        gap = statistics.median(r["pause_s"] for r in rows)
        print(f"{kind:20}{gap * 1000:>13.0f}{statistics.median(r['errors'] for r in rows):>8.0f}"
              f"{statistics.median(r['lost'] for r in rows):>6.0f}"
              f"{statistics.median(r['first_write_s'] for r in rows):>20.2f}{gap / ref if ref else float('nan'):>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scenario", choices=["switchover", "crash", "patroni"], default="switchover")
    parser.add_argument("--timeline", action="store_true", help="patroni: print each delegated run as a timeline")
    parser.add_argument("--no-patroni", action="store_true",
                        help="switchover: skip Patroni's REST call; compare with PATRONI_REST_SWITCHOVER_S")
    args = parser.parse_args()
    if args.scenario == "crash":
        crash_main(args.runs)
        return
    if args.scenario == "patroni":
        patroni_main(args.runs, args.timeline)
        return
    from prefect.testing.utilities import prefect_test_harness

    from flows.failover import failover
    from flows.rejoin import rejoin
    from tasks.failover.model import FailoverRequest, RejoinRequest

    box = Sandbox.ephemeral("pgrb-bench-failover-")
    journal = tempfile.mkdtemp(prefix="pgrb-bench-journal-")
    results: dict[str, list[dict]] = {"flow": [], "bare": []}
    step_ms: dict[str, list[float]] = {}
    last = {"detail": ""}  # the flow's run line: its write_pause_ms and slowest step
    try:
        box.start()
        with box.connect("primary") as conn:
            conn.execute("CREATE TABLE public.bench_writes (n bigint PRIMARY KEY)")
        with prefect_test_harness(server_startup_timeout=120):
            save_failover_blocks(box, BLOCK)

            def via_flow(old, new):
                report = failover(FailoverRequest(cluster_block=BLOCK, node_control_block=BLOCK,
                                                  endpoint_block=BLOCK, journal_dir=journal,
                                                  confirm_cluster=BLOCK))
                assert report.status == "completed", report.summary
                for s in report.steps:
                    if s.status == "done" and (s.phase == 2 or s.step == "update-cluster-block"):
                        step_ms.setdefault(s.step, []).append(s.duration_ms)
                for phase, seconds in report.phase_seconds.items():
                    step_ms.setdefault(f"phase {phase}", []).append(seconds * 1000)
                step_ms.setdefault("clients held (write_pause_ms)", []).append(report.write_pause_ms)
                slowest = max((s for s in report.steps if s.status == "done" and s.duration_ms is not None),
                              key=lambda s: s.duration_ms)
                last["detail"] = (f", write_pause_ms {report.write_pause_ms:.0f}, slowest step {slowest.step} "
                                  f"{slowest.duration_ms:.0f} ms")
                return next(s.at for s in report.steps if s.step == "verify-promotion" and s.status == "done"
                            ).timestamp()

            def bare(old, new):
                last["detail"] = ""
                bare_switchover(box, old, new)

            for i in range(args.runs):
                for kind, fn in (("flow", via_flow), ("bare", bare)):
                    box.wait_streaming(roles(box)[0])
                    result = measure(box, fn)
                    results[kind].append(result)
                    print(f"run {i + 1} {kind}: pause {result['pause_s'] * 1000:.0f} ms, errors {result['errors']}, "
                          f"lost {result['lost']} of {result['acked']}, total {result['total_s']:.2f} s"
                          f"{last['detail']}", flush=True)
                    rejoin(RejoinRequest(cluster_block=BLOCK, node_control_block=BLOCK))
    finally:
        box.destroy()
    patroni_totals = None if args.no_patroni else patroni_reference(args.runs)
    patroni_s = statistics.median(patroni_totals) if patroni_totals else PATRONI_REST_SWITCHOVER_S
    patroni_from = "measured in this run" if patroni_totals else "FACTS.md"

    print("\nflow, median ms per step (phase 2 and the cluster block) and per phase:")
    for step, values in step_ms.items():
        print(f"  {step:32}{statistics.median(values):>8.0f}")

    def med(kind, key):
        return statistics.median(r[key] for r in results[kind])

    print(f"\nswitchover under write load through pgbouncer, {args.runs} runs each, medians")
    print(f"{'':34}{'flow':>10}{'bare':>10}{'flow/bare':>11}")
    for key, label, scale in (("pause_s", "write gap (ms)", 1000), ("total_s", "call -> return (s)", 1)):
        f, b = med("flow", key) * scale, med("bare", key) * scale
        print(f"{label:34}{f:>10.2f}{b:>10.2f}{f / b if b else float('nan'):>11.2f}")
    print(f"{'write_pause_ms (PAUSE..RESUME)':34}{statistics.median(step_ms['clients held (write_pause_ms)']):>10.1f}")
    print(f"{'call -> verified new primary (s)':34}{med('flow', 'verified_s'):>10.2f}")
    for key, label in (("errors", "client errors"), ("lost", "acknowledged rows lost")):
        print(f"{label:34}{med('flow', key):>10.0f}{med('bare', key):>10.0f}")
    gap = med("flow", "pause_s") / med("bare", "pause_s")
    total = med("flow", "total_s")
    print(f"{'(max over runs) errors/lost':34}{max(r['errors'] for r in results['flow']):>8}/"
          f"{max(r['lost'] for r in results['flow'])}{max(r['errors'] for r in results['bare']):>8}/"
          f"{max(r['lost'] for r in results['bare'])}")
    print(f"{'Patroni REST POST /switchover (s)':34}{patroni_s:>10.2f}   ({patroni_from})")
    print(f"\nratio write gap flow/bare sequence: {gap:.2f} (goal <= 1.2)")
    print(f"ratio total flow/Patroni REST switchover ({patroni_s:.2f} s, {patroni_from}): "
          f"{total / patroni_s:.2f} (goal <= 1.0; call -> verified new primary "
          f"{med('flow', 'verified_s') / patroni_s:.2f})")


if __name__ == "__main__":
    main()
