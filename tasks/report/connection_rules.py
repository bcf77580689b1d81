"""Connection troubleshooting rules (runbook 3.1): pure functions from diagnostics to Recommendations."""

from __future__ import annotations

from pydantic import BaseModel, Field

from tasks.core.findings import human_seconds
from tasks.core.recommendations import Recommendation
from tasks.core.redact import redact_sql
from tasks.report.connection_churn import ChurnSample
from tasks.report.connections import ConnectionsSnapshot


class ConnectionRules(BaseModel):
    """Thresholds of the connection troubleshooter (rendered as the run form in the Prefect UI)."""

    usage_warning_percent: float = Field(default=80, ge=1, le=100, description="Usable slots in use: an issue.")
    usage_critical_percent: float = Field(default=95, ge=1, le=100, description="Usable slots in use: critical.")
    max_idle_in_transaction: int = Field(default=10, ge=0, le=10_000,
                                         description="More sessions idle in transaction than this is an issue.")
    idle_in_transaction_minutes: float = Field(default=5, ge=0.01, le=10_080,
                                               description="A session idle in transaction this long is an issue.")
    app_share_percent: float = Field(default=50, ge=1, le=100,
                                     description="One application holding this share of client backends.")
    app_min_sessions: int = Field(default=10, ge=1, description="...and at least this many sessions.")
    churn_per_second: float = Field(default=5, ge=0.1, le=100_000,
                                    description="New sessions per second above which a pooler is needed.")
    churn_sample_seconds: float = Field(default=2, ge=0.5, le=60, description="How long to count new sessions.")


def _session(s) -> dict:
    return {"pid": s.pid, "user": s.usename, "application": s.application_name, "client": s.client_addr,
            "transaction_seconds": round(s.xact_seconds, 1), "idle_seconds": round(s.state_seconds, 1),
            "query": redact_sql(s.query, 150)}


def usage_rule(snap: ConnectionsSnapshot, r: ConnectionRules) -> list[Recommendation]:
    used, usable = snap.client_backends, snap.limits.usable
    percent = 100.0 * used / usable
    if percent < r.usage_warning_percent:
        return []
    critical = percent >= r.usage_critical_percent
    top_app, top_n = next(iter(snap.by("application_name").items()), ("(none)", 0))
    return [Recommendation(
        id="connection-usage", rule="connection-usage", severity="critical" if critical else "warning",
        subject="cluster", impact=percent,
        finding=f"{used} of {usable} usable connection slots are in use ({percent:.0f} %).",
        evidence={"used": used, "usable": usable, "max_connections": snap.limits.max_connections,
                  "reserved": snap.limits.reserved, "by_state": snap.by_state(),
                  "by_application": dict(list(snap.by("application_name").items())[:5])},
        action=(f"Find why {top_app!r} holds {top_n} sessions; route applications through pgbouncer in "
                "transaction mode; raise max_connections only with the memory to back it (restart needed)."),
        fix_flow="high-load-response" if critical else None)]


def idle_in_transaction_rules(snap: ConnectionsSnapshot, r: ConnectionRules) -> list[Recommendation]:
    recs = []
    sessions = snap.idle_in_transaction
    count = snap.by_state()["idle in transaction"]
    if count > r.max_idle_in_transaction:
        apps = {}
        for s in sessions:
            apps[s.application_name or "(none)"] = apps.get(s.application_name or "(none)", 0) + 1
        recs.append(Recommendation(
            id="idle-in-transaction-many", rule="idle-in-transaction-many", severity="warning", subject="cluster",
            impact=100 * count / snap.limits.usable,
            finding=f"{count} sessions are idle in transaction (more than {r.max_idle_in_transaction}).",
            evidence={"count": count, "by_application": apps, "sessions": [_session(s) for s in sessions[:20]]},
            action=("Set idle_in_transaction_session_timeout (e.g. ALTER ROLE <app role> SET "
                    "idle_in_transaction_session_timeout = '5min') and make the application commit or roll back "
                    "before doing other work."),
            fix_flow="high-load-response"))
    limit_s = r.idle_in_transaction_minutes * 60
    old = [s for s in sessions if s.xact_seconds >= limit_s]
    if old:
        recs.append(Recommendation(
            id="idle-in-transaction-old", rule="idle-in-transaction-old", severity="warning", subject="cluster",
            impact=100 * len(old) / snap.limits.usable,
            finding=f"{len(old)} session(s) idle in transaction for more than {human_seconds(limit_s)}; the oldest, "
                    f"pid {old[0].pid} ({old[0].application_name or 'no application'}), for "
                    f"{human_seconds(old[0].xact_seconds)}.",
            evidence={"count": len(old), "pids": [s.pid for s in old], "sessions": [_session(s) for s in old[:20]]},
            action=("These hold locks and the xmin horizon (bloat): terminate them with the high-load flow "
                    f"(pg_terminate_backend), and set idle_in_transaction_session_timeout = '{int(limit_s)}s'."),
            fix_flow="high-load-response"))
    return recs


def application_share_rule(snap: ConnectionsSnapshot, r: ConnectionRules) -> list[Recommendation]:
    total = snap.client_backends
    if not total:
        return []
    app, n = next(iter(snap.by("application_name").items()))
    share = 100.0 * n / total
    if share < r.app_share_percent or n < r.app_min_sessions:
        return []
    idle = sum(g.idle for g in snap.groups if (g.application_name or "(none)") == app)
    return [Recommendation(
        id=f"application-share:{app}", rule="application-share", severity="warning", subject=f"application {app}",
        impact=share,
        finding=f"Application {app!r} holds {n} of {total} client backends ({share:.0f} %), {idle} of them idle.",
        evidence={"application": app, "sessions": n, "client_backends": total, "idle": idle,
                  "usable_slots": snap.limits.usable,
                  "by_client": {g.client_addr or "local": g.total for g in snap.groups if g.application_name == app}},
        action=(f"Put pgbouncer in transaction mode in front of {app!r} and lower its client-side pool "
                f"(it keeps {idle} idle connections); if every session is busy, raise the pooler's pool size "
                "instead of max_connections."),
        fix_flow=None)]


def pooler_rules(snap: ConnectionsSnapshot, churn: ChurnSample | None, has_pooler: bool,
                 r: ConnectionRules) -> list[Recommendation]:
    recs = []
    if not has_pooler:
        recs.append(Recommendation(
            id="no-pooler", rule="no-pooler", severity="warning" if snap.client_backends >= 50 else "info",
            subject="cluster", impact=100 * snap.client_backends / snap.limits.usable,
            finding=f"No connection pooler is configured in front of the cluster ({snap.client_backends} client "
                    "backends connect directly).",
            evidence={"client_backends": snap.client_backends, "usable_slots": snap.limits.usable},
            action=("Deploy pgbouncer in transaction mode and set the endpoint in the PostgresCluster block; "
                    "psycopg clients behind it need prepare_threshold=None."),
            fix_flow=None))
    if churn and churn.sessions_per_second is not None and churn.sessions_per_second >= r.churn_per_second:
        recs.append(Recommendation(
            id="connection-churn", rule="connection-churn", severity="warning", subject="cluster",
            impact=100 * churn.young_backends / snap.limits.usable,  # slots held by short-lived sessions
            finding=f"{churn.sessions_per_second:.1f} new sessions per second (each a forked backend); "
                    f"sessions live {human_seconds(churn.avg_session_seconds)} on average.",
            evidence=churn.model_dump(),
            action=("Reuse connections: a client-side pool, or pgbouncer in transaction mode"
                    + (" (already configured: check that clients go through it)." if has_pooler else ".")),
            fix_flow=None))
    return recs


def connection_recommendations(snap: ConnectionsSnapshot, churn: ChurnSample | None, has_pooler: bool,
                               r: ConnectionRules) -> list[Recommendation]:
    return (usage_rule(snap, r) + idle_in_transaction_rules(snap, r) + application_share_rule(snap, r)
            + pooler_rules(snap, churn, has_pooler, r))
