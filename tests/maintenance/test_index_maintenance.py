"""Index maintenance against the real sandbox: findings with DO/UNDO, replica scans, _ccnew leftovers,
REINDEX CONCURRENTLY of a bloated index, drops only of listed indexes, hostile names."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from flows.index_maintenance import index_maintenance
from tasks.core.errors import UnknownObject
from tasks.maintenance.index_report import IndexParams
from tasks.maintenance.maintenance_log import read_maintenance_log
from tests.helpers import wait_for, wait_horizon

pytestmark = pytest.mark.versioned  # database-facing, version-dependent: run on 14 and 18 too

S = "idx_t"
HOSTILE = 'Ix"; DROP TABLE idx_t.t; --'
BASE = dict(min_stats_window_days=0, unused_min_bytes=0, bloat_ratio=0.5, bloat_min_bytes=200_000)


def _q(box, query, params=None, node="primary"):
    with psycopg.connect(box.conninfo(node), autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else None


def _indexes(box) -> dict[str, bool]:
    rows = _q(box, "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                   "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s", (S,))
    return dict(rows)


@pytest.fixture(scope="module")
def idx_schema(sandbox):
    def ex(text, *idents):
        _q(sandbox, sql.SQL(text).format(*idents))

    t, big = sql.Identifier(S, "t"), sql.Identifier(S, "big")
    ex("DROP SCHEMA IF EXISTS {} CASCADE", sql.Identifier(S))
    ex("CREATE SCHEMA {}", sql.Identifier(S))
    ex("CREATE TABLE {} (id int PRIMARY KEY, a int, b int, c text) WITH (autovacuum_enabled = off)", t)
    ex("INSERT INTO {} SELECT g, g, g % 100, md5(g::text) FROM generate_series(1, 5000) g", t)
    for name, cols in (("uniq_a", "UNIQUE INDEX {} ON {} (a)"), ("idx_a", "INDEX {} ON {} (a)"),
                       ("idx_a_dup", "INDEX {} ON {} (a)"), ("idx_a_b", "INDEX {} ON {} (a, b)"),
                       ("idx_b", "INDEX {} ON {} (b)"), ("idx_unused", "INDEX {} ON {} (c)"),
                       (HOSTILE, "INDEX {} ON {} (c, id)")):
        ex("CREATE " + cols, sql.Identifier(name), t)
    ex("CREATE TABLE {} (id int, v int) WITH (autovacuum_enabled = off)", big)
    ex("INSERT INTO {} SELECT g, g FROM generate_series(1, 150000) g", big)
    ex("CREATE INDEX {} ON {} (v)", sql.Identifier("big_v"), big)
    ex("DELETE FROM {} WHERE id % 4 <> 0", big)
    wait_horizon(sandbox)
    ex("VACUUM ANALYZE {}", big)
    ex("ANALYZE {}", t)
    # A cancelled REINDEX CONCURRENTLY: a writer's open transaction makes it wait after it has
    # created big_v_ccnew; statement_timeout cancels it there, leaving the invalid leftover.
    writer = psycopg.connect(sandbox.conninfo("primary"))
    writer.execute(sql.SQL("INSERT INTO {} VALUES (0, 0)").format(big))
    try:
        with pytest.raises(psycopg.errors.QueryCanceled):
            with psycopg.connect(sandbox.conninfo("primary"), autocommit=True) as conn:
                conn.execute("SET statement_timeout = 1000")
                conn.execute(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(sql.Identifier(S, "big_v")))
        # The same wait cancels a CREATE INDEX CONCURRENTLY: an invalid index that is not a leftover.
        with pytest.raises(psycopg.errors.QueryCanceled):
            with psycopg.connect(sandbox.conninfo("primary"), autocommit=True) as conn:
                conn.execute("SET statement_timeout = 1000")
                conn.execute(sql.SQL("CREATE INDEX CONCURRENTLY {} ON {} (id)").format(
                    sql.Identifier("big_id"), big))
    finally:
        writer.rollback()
        writer.close()
    assert _indexes(sandbox)["big_v_ccnew"] is False and _indexes(sandbox)["big_id"] is False
    # idx_b is scanned only on the replica.
    wait_for(lambda: _q(sandbox, "SELECT to_regclass('idx_t.idx_b') IS NOT NULL", node="replica")[0][0])
    with psycopg.connect(sandbox.conninfo("replica"), autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
        conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE b = 5").format(t)).fetchall()
    wait_for(lambda: _q(sandbox, "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'idx_b'",
                        node="replica")[0][0] > 0, what="replica index scan counted")
    yield S
    _q(sandbox, sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(S)))


def _by(report, kind):
    return {f.index.split(".", 1)[1]: f for f in report.findings if f.kind == kind and f.index.startswith(S + ".")}


def test_dry_run_reports_every_kind_with_do_and_undo_and_changes_nothing(sandbox, cluster_block, idx_schema):
    before = _indexes(sandbox)
    report = index_maintenance(cluster_block=cluster_block, params=IndexParams(**BASE))
    assert _indexes(sandbox) == before and report.dry_run
    unused = _by(report, "unused")
    assert "idx_unused" in unused and HOSTILE in unused
    assert "idx_b" not in unused, "scanned on the replica"
    assert not {"t_pkey", "uniq_a"} & set(unused), "enforcing indexes are never 'unused'"
    u = unused["idx_unused"]
    assert u.do == 'DROP INDEX CONCURRENTLY IF EXISTS "idx_t"."idx_unused";'
    assert u.undo == "CREATE INDEX CONCURRENTLY idx_unused ON idx_t.t USING btree (c);"
    dup = _by(report, "duplicate")
    assert set(dup) == {"idx_a", "idx_a_dup"} and "uniq_a" in dup["idx_a"].reason  # the unique one is kept
    assert {"idx_a", "idx_a_dup"} <= set(_by(report, "redundant"))
    assert "idx_a_b" not in _by(report, "redundant") and "uniq_a" not in _by(report, "redundant")
    inv = _by(report, "invalid")
    assert "big_v_ccnew" in inv and "failed REINDEX CONCURRENTLY" in inv["big_v_ccnew"].reason
    assert inv["big_id"].do == 'REINDEX INDEX CONCURRENTLY "idx_t"."big_id";'
    assert "big_v" in _by(report, "bloated")
    assert _by(report, "bloated")["big_v"].undo == "none needed: REINDEX CONCURRENTLY rebuilds in place"
    assert inv["big_id"].undo == _by(report, "bloated")["big_v"].undo
    assert inv["big_v_ccnew"].undo.startswith("none needed: the invalid leftover")
    assert inv["big_id"].drop_undo == "CREATE INDEX CONCURRENTLY big_id ON idx_t.big USING btree (id);"
    assert any(a.index == f"{S}.big_v" and a.action == "reindex" and a.status == "planned" for a in report.actions)
    assert not any(a.action == "drop" for a in report.actions), "nothing listed, nothing dropped"


def test_short_stats_window_decides_no_unused(cluster_block, idx_schema):
    report = index_maintenance(cluster_block=cluster_block,
                               params=IndexParams(**{**BASE, "min_stats_window_days": 3650}))
    assert not _by(report, "unused") and any("not decided" in n for n in report.notes)


def test_unknown_listed_index_is_a_clear_error(sandbox, cluster_block, idx_schema):
    before = _indexes(sandbox)
    with pytest.raises(UnknownObject, match="no index idx_t.nope"):
        index_maintenance(cluster_block=cluster_block, params=IndexParams(
            **BASE, dry_run=False, drop_indexes=[f"{S}.idx_unused", f"{S}.nope"]))
    assert _indexes(sandbox) == before


def test_actions_rebuild_bloated_and_drop_only_listed(sandbox, cluster_block, idx_schema, tmp_path):
    size_before = _q(sandbox, "SELECT pg_relation_size('idx_t.big_v')")[0][0]
    report = index_maintenance(cluster_block=cluster_block, params=IndexParams(
        **BASE, dry_run=False, log_dir=str(tmp_path), rebuild_invalid=True,
        drop_indexes=[{"schema": S, "name": HOSTILE}, f"{S}.big_v_ccnew", f"{S}.t_pkey", f"{S}.uniq_a"]))
    after = _indexes(sandbox)
    assert HOSTILE not in after and "big_v_ccnew" not in after
    assert {"t_pkey", "uniq_a", "idx_unused", "idx_a", "idx_a_dup", "idx_b", "big_v", "big_id"} <= set(after)
    assert all(after.values()), "the invalid big_id was rebuilt valid"
    assert _q(sandbox, "SELECT count(*) FROM idx_t.t")[0][0] == 5000
    acts = {a.index.split(".", 1)[1]: a for a in report.actions if a.index.startswith(S + ".")}
    assert acts["t_pkey"].status == "refused" and acts["uniq_a"].status == "refused"
    assert acts[HOSTILE].status == "done" and acts["big_v_ccnew"].status == "done"
    assert acts["big_id"].action == "reindex" and acts["big_id"].status == "done"
    reindex = acts["big_v"]
    assert reindex.status == "done" and reindex.size_before == size_before
    assert reindex.size_after < 0.6 * reindex.size_before
    assert _q(sandbox, "SELECT pg_relation_size('idx_t.big_v')")[0][0] == reindex.size_after
    log = read_maintenance_log(str(tmp_path))
    assert {r["index"] for r in log} >= {f"{S}.big_v", f"{S}.{HOSTILE}"}
    assert "drop(s) refused" in report.summary
    from prefect.artifacts import Artifact

    ran = [a for a in report.actions if a.status not in ("planned", "refused")]
    bar = Artifact.get(f"indexes-progress-{report.cluster}")  # one step per index acted on
    assert bar.type == "progress" and bar.data == 100.0, bar
    assert f"{len(ran)} of {len(ran)} indexes" in bar.description and "done" in bar.description, bar.description
    assert "**What was done:**" in Artifact.get(report.artifact_key).data


def _ix(oid, name, cols, **kw):
    from tasks.maintenance.indexes import IndexInfo

    base = dict(oid=oid, schema_name="s", table_name="t", table_oid=1, name=name, am="btree", size_bytes=10 * 2**20,
                is_unique=False, is_primary=False, is_exclusion=False, is_replident=False, is_valid=True,
                is_ready=True, backs_constraint=False, key_columns=len(cols), indkey=cols, indclass=[1] * len(cols),
                indcollation=[0] * len(cols), indoption=[0] * len(cols), exprs=None, pred=None,
                definition=f"CREATE INDEX {name} ON s.t USING btree (x)", idx_scan=0)
    return IndexInfo(**{**base, **kw})


def test_unused_is_not_decided_without_every_node():
    from tasks.maintenance.index_report import unused
    from tasks.maintenance.indexes import NodeScans

    ixs = [_ix(10, "a", [1])]
    found, notes = unused(ixs, [NodeScans(node="primary", window_days=30, scans={})], ["replica"], IndexParams())
    assert not found and "replica" in notes[0]
    found, _ = unused(ixs, [NodeScans(node="primary", window_days=30, scans={}),
                            NodeScans(node="replica", window_days=30, scans={10: 3})], [], IndexParams())
    assert not found


def test_duplicate_and_redundant_rules():
    from tasks.maintenance.index_report import duplicates, redundant

    ixs = [_ix(10, "nonuniq", [1]), _ix(11, "uniq", [1], is_unique=True),
           _ix(12, "other_opclass", [1], indclass=[2]), _ix(13, "partial", [1], pred="(x > 0)"),
           _ix(14, "wide", [1, 2]), _ix(15, "desc", [1], indoption=[3]),
           _ix(16, "uniq_prefix", [2], is_unique=True), _ix(17, "wide2", [2, 1])]
    dup = {f.index: f for f in duplicates(ixs)}
    assert set(dup) == {"s.nonuniq"} and "s.uniq" in dup["s.nonuniq"].reason
    red = {f.index for f in redundant(ixs)}
    assert red == {"s.nonuniq"}, "unique, other opclass, partial and DESC indexes are not redundant"


def _replica_has_index(box, db: str, name: str) -> bool:
    """The replica replayed the database and the index (index statistics are read on every node)."""
    try:
        with psycopg.connect(box.conninfo("replica", dbname=db), autocommit=True) as conn:
            return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]
    except psycopg.OperationalError:
        return False


def test_unwritable_maintenance_log_is_reported_alerted_and_fails_the_run(sandbox, cluster_block, tmp_path, slack):
    from tasks.maintenance.maintenance_log import MaintenanceLogFailed
    from tests.helpers import save_slack_block

    db = "idx_logfail_db"
    _q(sandbox, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
    _q(sandbox, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    try:
        with psycopg.connect(sandbox.conninfo("primary", dbname=db), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int, c int)")
            conn.execute("CREATE INDEX t_c_unused ON t (c)")
        wait_for(lambda: _replica_has_index(sandbox, db, "t_c_unused"), what="the replica to replay the index")
        (tmp_path / "a-file").write_text("not a directory")
        state = index_maintenance(
            cluster_block=cluster_block, database=db, return_state=True,
            slack_block=save_slack_block(slack, "idx-logfail", "xoxb-ok-ilog"),
            params=IndexParams(**BASE, dry_run=False, drop_indexes=["public.t_c_unused"],
                               log_dir=str(tmp_path / "a-file" / "logs")))
        assert state.is_failed()
        with pytest.raises(MaintenanceLogFailed) as raised:
            state.result()
        report = raised.value.report
        assert [(a.index, a.status) for a in report.actions] == [("public.t_c_unused", "done")], report.actions
        assert "maintenance log was NOT written" in report.log_error and report.status == "critical"
        assert report.log_error in report.summary and report.artifact_key and report.notification.ok
        assert any("maintenance log was NOT written" in c.raw for c in slack.calls("chat.postMessage"))
    finally:
        _q(sandbox, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


def test_interrupted_reindex_drops_only_the_leftover_it_made(sandbox, tmp_path):
    """A writer's open transaction makes REINDEX CONCURRENTLY wait after it created <index>_ccnew:
    lock_timeout interrupts it there. The leftover is dropped when the drop can get through (here the
    writer ends as soon as the drop waits for it), reported when it cannot; an older leftover is left."""
    import threading

    from sandbox.blocks import sandbox_cluster_block
    from tasks.core.relations import RelationRef
    from tasks.maintenance.indexes import IndexActionResult, run_index_action

    schema, name = "idx_cc", 'Cc "ix"; x'
    _q(sandbox, sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    _q(sandbox, sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    _q(sandbox, sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(schema, "t")))
    _q(sandbox, sql.SQL("CREATE INDEX {} ON {} (id)").format(sql.Identifier(name), sql.Identifier(schema, "t")))
    oid = _q(sandbox, "SELECT %s::regclass::oid::bigint", (sql.Identifier(schema, name).as_string(),))[0][0]
    ref = RelationRef(oid=oid, schema_name=schema, name=name, kind="i")
    target = sandbox_cluster_block(sandbox).primary_target()
    planned = IndexActionResult(index=ref.qualified, action="reindex", status="planned", statement="REINDEX")

    def leftovers():
        return dict(_q(sandbox, "SELECT c.relname, i.indisvalid FROM pg_index i "
                                "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace = %s::regnamespace "
                                "AND c.relname LIKE '%%ccnew%%'", (schema,)))

    def writer():
        conn = psycopg.connect(sandbox.conninfo("primary"))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(sql.Identifier(schema, "t")))
        return conn

    try:
        # 1. The writer stays: the rebuild is interrupted and its leftover cannot be dropped either.
        held = writer()
        try:
            first = run_index_action.fn(target, planned, ref, lock_timeout_ms=300, statement_timeout_ms=10_000)
        finally:
            held.rollback()
            held.close()
        assert first.status == "skipped-locked"
        assert leftovers() == {f"{name}_ccnew": False}
        assert len(first.cleanup) == 1 and "NOT dropped" in first.cleanup[0] and f"{name}_ccnew" in first.summary

        # 2. The writer ends once the cleanup's DROP waits for it: the new leftover is dropped, the older one kept.
        held = writer()

        def release_when_drop_waits():
            wait_for(lambda: _q(sandbox, "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                         "AND query LIKE 'DROP INDEX CONCURRENTLY%%'"), timeout=15, interval=0.02)
            held.rollback()

        releaser = threading.Thread(target=release_when_drop_waits)
        releaser.start()
        try:
            second = run_index_action.fn(target, planned, ref, lock_timeout_ms=1_500, statement_timeout_ms=10_000)
        finally:
            releaser.join(20)
            held.close()
        assert second.status == "skipped-locked"
        assert second.cleanup == [f"dropped the invalid leftover {schema}.{name}_ccnew1 of the interrupted rebuild"]
        assert leftovers() == {f"{name}_ccnew": False}  # older than this run: reported, never dropped here
        assert _q(sandbox, "SELECT indisvalid FROM pg_index WHERE indexrelid = %s", (oid,))[0][0]
    finally:
        _q(sandbox, sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


RT = "Idx RT"  # mixed case and a space
WEIRD = 'we"ird idx'
ENFORCING = ("Enf T_pkey", "Uniq U", "No Overlap", "Repl Ident")


@pytest.fixture(scope="module")
def enf_schema(sandbox):
    """Indexes that enforce something (primary key, unique constraint, exclusion constraint, replica
    identity), two plain unused ones with hostile names, and an invalid unique one (a failed CREATE
    INDEX CONCURRENTLY whose duplicates were then removed)."""
    def ex(text, *idents):
        _q(sandbox, sql.SQL(text).format(*idents))

    t = sql.Identifier(RT, "Enf T")
    ex("DROP SCHEMA IF EXISTS {} CASCADE", sql.Identifier(RT))
    ex("CREATE SCHEMA {}", sql.Identifier(RT))
    ex("CREATE TABLE {} (id int PRIMARY KEY, u int, r int4range, ri int NOT NULL, c text, d int, "
       "CONSTRAINT {} UNIQUE (u), CONSTRAINT {} EXCLUDE USING gist (r WITH &&))",
       t, sql.Identifier("Uniq U"), sql.Identifier("No Overlap"))
    ex("INSERT INTO {} SELECT g, g, int4range(g * 10, g * 10 + 5), g, md5(g::text), g FROM generate_series(1, 2000) g",
       t)
    ex("CREATE UNIQUE INDEX {} ON {} (ri)", sql.Identifier("Repl Ident"), t)
    ex("ALTER TABLE {} REPLICA IDENTITY USING INDEX {}", t, sql.Identifier("Repl Ident"))
    ex("CREATE INDEX {} ON {} (c)", sql.Identifier(WEIRD), t)
    ex("CREATE INDEX {} ON {} (d, c)", sql.Identifier("MixedCase Idx"), t)
    ex("UPDATE {} SET d = 1 WHERE id = 2", t)
    with pytest.raises(psycopg.errors.UniqueViolation):
        ex("CREATE UNIQUE INDEX CONCURRENTLY {} ON {} (d)", sql.Identifier('Bad "Uniq" D'), t)
    ex("UPDATE {} SET d = 2 WHERE id = 2", t)
    assert _q(sandbox, "SELECT indisvalid FROM pg_index WHERE indexrelid = %s::regclass",
              (sql.Identifier(RT, 'Bad "Uniq" D').as_string(None),))[0][0] is False
    yield RT
    ex("DROP SCHEMA IF EXISTS {} CASCADE", sql.Identifier(RT))


def _in_rt(report, kind):
    return {f.index.split(".", 1)[1]: f for f in report.findings if f.kind == kind and f.index.startswith(RT + ".")}


def test_enforcing_indexes_are_never_unused_nor_dropped(sandbox, cluster_block, enf_schema):
    flags = dict(_q(sandbox, "SELECT c.relname, (i.indisprimary, i.indisunique, i.indisexclusion, i.indisreplident, "
                             "EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid))::text "
                             "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                             "WHERE c.relnamespace = %s::regnamespace", (sql.Identifier(RT).as_string(None),)))
    assert flags["Enf T_pkey"] == "(t,t,f,f,t)" and flags["Uniq U"] == "(f,t,f,f,t)"
    assert flags["No Overlap"] == "(f,f,t,f,t)", "a non-unique index that backs an exclusion constraint"
    assert flags["Repl Ident"] == "(f,t,f,t,f)", "replica identity, backing no constraint"
    report = index_maintenance(cluster_block=cluster_block, params=IndexParams(
        **BASE, drop_indexes=[sql.Identifier(RT, name).as_string(None) for name in ENFORCING]))
    assert set(_in_rt(report, "unused")) == {WEIRD, "MixedCase Idx"}, "no scans: the control indexes are unused"
    droppable = {f.index.split(".", 1)[1] for f in report.findings if f.droppable and f.index.startswith(RT + ".")}
    assert not droppable & set(ENFORCING)
    drops = {a.index.split(".", 1)[1]: a for a in report.actions if a.action == "drop"}
    assert set(drops) == set(ENFORCING) and all(a.status == "refused" for a in drops.values())


def test_enforces_something_excludes_each_kind_alone():
    from tasks.maintenance.index_report import unused
    from tasks.maintenance.indexes import NodeScans

    ixs = [_ix(20, "plain", [1]), _ix(21, "pk", [1], is_primary=True), _ix(22, "excl", [1], is_exclusion=True),
           _ix(23, "replident", [1], is_replident=True), _ix(24, "constraint", [1], backs_constraint=True),
           _ix(25, "uniq", [1], is_unique=True)]
    found, _ = unused(ixs, [NodeScans(node="primary", window_days=30, scans={})], [], IndexParams())
    assert [f.index for f in found] == ["s.plain"]


def test_do_and_undo_of_hostile_names_round_trip_in_the_sandbox(sandbox, enf_schema):
    """Each finding's DO and UNDO text, composed with psycopg.sql, executes as printed."""
    from sandbox.blocks import sandbox_cluster_block
    from tasks.maintenance.bloat_report import BloatFinding
    from tasks.maintenance.index_report import LEFTOVER_UNDO, REINDEX_UNDO, bloated, invalid, plan_actions, unused
    from tasks.maintenance.indexes import NodeScans, read_index_inventory

    target = sandbox_cluster_block(sandbox).primary_target()

    def inventory():
        return {ix.name: ix for ix in read_index_inventory.fn(target) if ix.schema_name == RT}

    def definition(name):
        return _q(sandbox, "SELECT pg_get_indexdef(%s::regclass)", (sql.Identifier(RT, name).as_string(None),))[0][0]

    ixs = inventory()
    found, _ = unused(list(ixs.values()), [NodeScans(node="primary", window_days=30, scans={})], [],
                      IndexParams(unused_min_bytes=0))
    for f in found:  # 'we"ird idx' and 'MixedCase Idx': DROP, then CREATE INDEX CONCURRENTLY brings it back
        name = f.index.split(".", 1)[1]
        before = definition(name)
        assert f.do == sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {};").format(
            sql.Identifier(RT, name)).as_string(None)
        _q(sandbox, f.do)
        assert name not in inventory()
        _q(sandbox, f.undo)
        assert definition(name) == before and inventory()[name].is_valid
    assert {f.index.split(".", 1)[1] for f in found} == {WEIRD, "MixedCase Idx"}

    bad = invalid(list(ixs.values()))
    assert [f.index for f in bad] == [f'{RT}.Bad "Uniq" D'] and bad[0].undo == REINDEX_UNDO
    _q(sandbox, bad[0].do)  # REINDEX INDEX CONCURRENTLY rebuilds it valid
    assert inventory()['Bad "Uniq" D'].is_valid
    drop = plan_actions(bad, [bad[0].index], IndexParams())[0]  # listed: its drop and the drop's UNDO
    _q(sandbox, drop.statement)
    assert 'Bad "Uniq" D' not in inventory()
    _q(sandbox, drop.undo)
    assert inventory()['Bad "Uniq" D'].is_valid and inventory()['Bad "Uniq" D'].is_unique

    ix = inventory()[WEIRD]
    est = BloatFinding(kind="index", oid=ix.oid, relation=ix.qualified, table=f"{RT}.Enf T", size_bytes=10**8,
                       bloat_bytes=6 * 10**7, bloat_ratio=0.6, method="pgstatindex", reliable=True)
    [b] = bloated(list(inventory().values()), [est], IndexParams())
    assert b.undo == REINDEX_UNDO and "REINDEX" in b.undo
    _q(sandbox, b.do)
    assert inventory()[WEIRD].is_valid and definition(WEIRD).startswith('CREATE INDEX "we""ird idx" ON "Idx RT"')
    assert "none needed" in LEFTOVER_UNDO
