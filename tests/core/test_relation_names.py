"""Relation names round-trip: PostgreSQL's own syntax (a part as quote_ident() writes it, read as parse_ident()
reads it) and the structured {"schema", "name"} form both resolve exactly the table they name, for arbitrary
names PostgreSQL accepts. Property tests (hypothesis) against the live server."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import errors as pg_errors
from psycopg import sql

from sandbox.blocks import sandbox_cluster_block
from tasks.core.db import connect
from tasks.core.errors import UnknownObject
from tasks.core.relations import RelationName, parse_ident, parse_qualified_name, resolve
from tasks.core.server_capabilities import capabilities
from tasks.maintenance.vacuum import resolve_tables

pytestmark = pytest.mark.versioned

SCHEMA = 'Names "Ω". sch;ema'
DECOY = "names_decoy"
RESERVED = ["select", "table", "user", "order", "SELECT", "Table", "all", "check", "default", "limit"]
# letters of both cases, digits, and what makes quoting hard: quotes, dots, spaces, semicolons, dollars, unicode
ALPHABET = st.sampled_from(list('aZ_09$"."; .-\'\\ ') + ["é", "Ω", "ß", "İ", "日", "\t", "😀"])
NAME = st.one_of(
    st.text(ALPHABET, min_size=1, max_size=40),
    st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), min_size=1, max_size=40),
    st.sampled_from(RESERVED),
    st.integers(1, 63).map(lambda n: '"' * n),
).filter(lambda s: len(s.encode()) <= 63)
SETTINGS = settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(scope="module")
def names_db(sandbox):
    with sandbox.connect("primary") as conn:
        for schema in (SCHEMA, DECOY):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    yield sandbox_cluster_block(sandbox).target("primary")
    with sandbox.connect("primary") as conn:
        for schema in (SCHEMA, DECOY):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(scope="module")
def conn(sandbox):
    with sandbox.connect("primary") as c:
        yield c


@settings(SETTINGS, max_examples=400)
@given(text=st.one_of(st.text(ALPHABET, max_size=30), st.text(
    st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=20)))
@example(text='"a"."b"')
@example(text=' a . "B" ')
@example(text="a..b")
@example(text='""')
@example(text="a$")
@example(text="\x0bA")
@example(text="a .\x0b b")
def test_our_parser_reads_exactly_what_parse_ident_reads(conn, text):
    """The Python reader is the server's: same parts, and an error exactly when the server raises one
    (PostgreSQL 17+ also skips a vertical tab as a space: `Capabilities.vertical_tab_is_space`)."""
    vt = capabilities(conn.info.server_version).vertical_tab_is_space
    try:
        server = conn.execute("SELECT pg_catalog.parse_ident(%s)", (text,)).fetchone()[0]
    except (pg_errors.InvalidParameterValue, pg_errors.SyntaxError, pg_errors.NameTooLong):
        with pytest.raises(ValueError):
            parse_ident(text, vt)
        return
    assert parse_ident(text, vt) == server


def _quoted(conn, schema: str, name: str) -> str:
    return conn.execute("SELECT pg_catalog.quote_ident(%s) || '.' || pg_catalog.quote_ident(%s)",
                        (schema, name)).fetchone()[0]


def _create(conn, schema: str, name: str) -> int:
    ident = sql.Identifier(schema, name)
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(ident))
    return conn.execute("SELECT %s::regclass::oid", (ident.as_string(conn),)).fetchone()[0]


@settings(SETTINGS, max_examples=60)
@given(name=NAME)
@example(name="x" * 63)
@example(name="é" * 31)
@example(name='"')
@example(name='""""')
@example(name="Select")
@example(name="a.b")
@example(name="; DROP TABLE x; --")
@example(name=" lead and trail ")
def test_every_accepted_name_resolves_to_exactly_that_table(conn, names_db, name):
    oid = _create(conn, SCHEMA, name)
    decoys = [_create(conn, DECOY, name)]  # the same name in another schema
    if name.lower() != name:
        decoys.append(_create(conn, SCHEMA, name.lower()))  # what an unquoted (folded) reading would find
    try:
        spellings = [_quoted(conn, SCHEMA, name), RelationName(schema=SCHEMA, name=name),
                     {"schema": SCHEMA, "name": name}]
        assert parse_qualified_name(spellings[0]) == (SCHEMA, name)
        refs = resolve_tables.fn(names_db, spellings)
        assert [r.oid for r in refs] == [oid] * 3, (name, spellings[0])
        assert all((r.schema_name, r.name) == (SCHEMA, name) for r in refs)
        assert resolve_tables.fn(names_db, [_quoted(conn, DECOY, name)])[0].oid == decoys[0]
    finally:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(SCHEMA, name)))
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(DECOY, name)))
        if name.lower() != name:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(SCHEMA, name.lower())))


def test_an_unreadable_or_unknown_name_is_refused_with_how_to_write_it(conn, names_db):
    conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(SCHEMA, "My Table")))
    try:
        with connect(names_db, purpose="test") as s:
            with pytest.raises(UnknownObject) as bad:
                resolve(s, "public.My Table")  # a space needs quotes
            assert "quote_ident()" in str(bad.value) and '{"schema": "public", "name": "My Table"}' in str(bad.value)
            quoted = _quoted(conn, SCHEMA, "My Table")
            with pytest.raises(UnknownObject) as folded:  # read as my table: not there, but we say what is
                resolve(s, quoted.replace('"My Table"', '"my table"'))
            assert f"did you mean {quoted}" in str(folded.value), str(folded.value)
            assert resolve(s, quoted).name == "My Table"
    finally:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(SCHEMA, "My Table")))
