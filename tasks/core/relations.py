"""Naming and resolving relations given by an operator, validated before any action.

One exact syntax, PostgreSQL's own: `schema.name` where each part is written as `quote_ident()` writes it
and read as the server's `parse_ident()` reads it (an unquoted part is folded to lower case and may hold only
letters, digits, `_` and `$`; a part in double quotes is literal, with `""` for a quote). An unqualified name
is in schema `public`. Or the structured form `{"schema": ..., "name": ...}`, which needs no quoting at all.
A name that cannot be parsed or resolves to nothing is an UnknownObject error that says how to write it:
nothing is changed.
"""

from __future__ import annotations

from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field

from tasks.core.db import Session
from tasks.core.errors import UnknownObject
from tasks.core.server_capabilities import capabilities

HOW_TO = ('write each part as PostgreSQL\'s quote_ident() writes it: in double quotes when it has capitals, '
          'spaces, dots, quotes or other characters, a quote inside doubled (e.g. public."My Table", '
          '"my.schema"."say ""hi"""), or give {"schema": "public", "name": "My Table"}')


class RelationName(BaseModel):
    """A relation named by its exact schema and name: no quoting, no case folding."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    schema_name: str = Field(default="public", alias="schema", min_length=1, description="The schema, exactly.")
    name: str = Field(min_length=1, description="The table or index name, exactly.")


NameSpec = str | RelationName


class RelationRef(BaseModel):
    """A relation resolved in the catalog: its oid and its exact schema and name."""

    oid: int
    schema_name: str
    name: str
    kind: str = "r"

    @property
    def qualified(self) -> str:
        """schema.name as an operator reads it (not for SQL: use `identifier`)."""
        return f"{self.schema_name}.{self.name}"

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema_name, self.name)


_SPACE = " \t\n\r\f"  # scanner_isspace; PostgreSQL 17 added \v (vertical tab)


def _ident_start(ch: str) -> bool:
    return ch == "_" or ("a" <= ch <= "z") or ("A" <= ch <= "Z") or ord(ch) >= 0x80


def _ident_cont(ch: str) -> bool:
    return _ident_start(ch) or ("0" <= ch <= "9") or ch == "$"


def parse_ident(text: str, vertical_tab_is_space: bool = True) -> list[str]:
    """The parts of a qualified identifier exactly as PostgreSQL's `parse_ident(text, strict => true)` reads
    them (UTF-8 server), or ValueError saying why not. Checked against the server by a property test.
    `vertical_tab_is_space`: PostgreSQL 17+ skips a vertical tab around parts like a space; older ones refuse it."""
    space = _SPACE + ("\v" if vertical_tab_is_space else "")
    parts: list[str] = []
    i, n, after_dot = 0, len(text), False
    while i < n and text[i] in space:
        i += 1
    while True:
        if i < n and text[i] == '"':
            buf, i = [], i + 1
            while True:
                end = text.find('"', i)
                if end < 0:
                    raise ValueError(f"unclosed double quotes in {text!r}")
                buf.append(text[i:end])
                if end + 1 < n and text[end + 1] == '"':
                    buf.append('"')
                    i = end + 2
                    continue
                i = end + 1
                break
            part = "".join(buf)
            if not part:
                raise ValueError(f"a quoted identifier must not be empty in {text!r}")
        else:
            j = i
            while j < n and (_ident_start(text[j]) if j == i else _ident_cont(text[j])):
                j += 1
            if j == i:
                if after_dot:
                    raise ValueError(f"no valid identifier after a '.' in {text!r}")
                if i < n and text[i] == ".":
                    raise ValueError(f"no valid identifier before a '.' in {text!r}")
                raise ValueError(f"not a valid identifier: {text!r}")
            part = "".join(c.lower() if "A" <= c <= "Z" else c for c in text[i:j])
            i = j
        parts.append(part)
        while i < n and text[i] in space:
            i += 1
        if i < n and text[i] == ".":
            after_dot, i = True, i + 1
            while i < n and text[i] in space:
                i += 1
        elif i >= n:
            return parts
        else:
            raise ValueError(f"not a valid identifier: {text!r} (unexpected {text[i]!r})")


def parse_qualified_name(spec: NameSpec, default_schema: str = "public",
                         vertical_tab_is_space: bool = True) -> tuple[str, str]:
    """'schema.name' (PostgreSQL syntax) or a RelationName → (schema, name); unqualified: `default_schema`."""
    if isinstance(spec, RelationName):
        return spec.schema_name, spec.name
    if isinstance(spec, dict):
        named = RelationName.model_validate(spec)
        return named.schema_name, named.name
    parts = parse_ident(spec, vertical_tab_is_space)
    if len(parts) == 1:
        return default_schema, parts[0]
    if len(parts) != 2:
        raise ValueError(f"{spec!r} has {len(parts)} parts: give schema.name (the database is the run's)")
    return parts[0], parts[1]


# Which relation of the given kinds has exactly this schema and name?
RESOLVE_SQL = """
SELECT c.oid::bigint AS oid,
       n.nspname AS schema_name,
       c.relname AS name,
       c.relkind::text AS kind
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE n.nspname = %(schema)s
   AND c.relname = %(name)s
   AND c.relkind = ANY(%(kinds)s)
"""


# Relations the operator may have meant: the same name in another ASCII case (what unquoted folding changes),
# or the literal text unparsed; as quote_ident() would write them.
SIMILAR_SQL = """
SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) AS value
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE c.relkind = ANY(%(kinds)s)
   AND (   (lower(n.nspname COLLATE "C") = lower(%(schema)s COLLATE "C")
            AND lower(c.relname COLLATE "C") = lower(%(name)s COLLATE "C"))
        OR n.nspname || '.' || c.relname = %(text)s
        OR (n.nspname = %(schema)s AND c.relname = %(text)s))
 ORDER BY 1
 LIMIT 5
"""


class _Value(BaseModel):
    value: str


def resolve(session: Session, spec: NameSpec, kinds: tuple[str, ...] = ("r", "m")) -> RelationRef:
    """The relation `spec` names, or UnknownObject saying how to write it (nothing was changed)."""
    what = "index" if kinds == ("i",) else "table"
    try:
        schema, name = parse_qualified_name(
            spec, vertical_tab_is_space=capabilities(session.server_version_num).vertical_tab_is_space)
    except ValueError as exc:
        raise UnknownObject(session.target.label, f"{exc}: {HOW_TO}") from None
    row = session.fetch_one(RESOLVE_SQL, {"schema": schema, "name": name, "kinds": list(kinds)}, RelationRef)
    if row is None:
        similar = session.fetch_all(SIMILAR_SQL, {"schema": schema, "name": name, "kinds": list(kinds),
                                                  "text": spec if isinstance(spec, str) else ""}, _Value)
        hint = (f"; did you mean {' or '.join(s.value for s in similar)}?" if similar else "") + f" ({HOW_TO})"
        shown = spec if isinstance(spec, str) else f"{schema}.{name}"
        raise UnknownObject(session.target.label, f"no {what} {schema}.{name} in database "
                                                  f"{session.target.database} (read from {shown!r}){hint}")
    return row


def resolve_ref(session: Session, ref: RelationRef) -> RelationRef | None:
    """`ref` again by schema and name (it may have been dropped or rebuilt since), or None."""
    return session.fetch_one(
        RESOLVE_SQL, {"schema": ref.schema_name, "name": ref.name, "kinds": [ref.kind]}, RelationRef)
