"""Naming and resolving relations given by an operator: 'schema.table', validated before any action.

Names are taken literally (case, spaces, quotes, semicolons and non-ASCII letters are part of the
name); a part may also be written as a double-quoted SQL identifier ("a.b" with "" for a quote) when
it contains a dot. A name that resolves to nothing is an UnknownObject error: nothing is changed.
"""

from __future__ import annotations

from psycopg import sql
from pydantic import BaseModel

from tasks.core.db import Session
from tasks.core.errors import UnknownObject


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


def parse_qualified_name(text: str, default_schema: str = "public") -> tuple[str, str]:
    """'schema.table' → (schema, table); an unqualified name is in `default_schema`.

    Bare parts are literal (no case folding); a part that starts with a double quote is read as a
    quoted SQL identifier, so '"my.schema"."We""ird"' → ('my.schema', 'We"ird').
    """
    parts: list[str] = []
    i, n = 0, len(text)
    while i <= n:
        if i < n and text[i] == '"':
            j, buf = i + 1, []
            while True:
                if j >= n:
                    raise ValueError(f"unterminated quoted identifier in {text!r}")
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(text[j])
                j += 1
            parts.append("".join(buf))
            i = j + 1
            if i < n and text[i] != ".":
                raise ValueError(f"expected '.' after a quoted identifier in {text!r}")
        else:
            j = text.find(".", i) if len(parts) == 0 else -1
            j = n if j < 0 else j
            parts.append(text[i:j])
            i = j
        if i >= n:
            break
        i += 1  # skip the dot
    if len(parts) == 1:
        parts.insert(0, default_schema)
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise ValueError(f"not a relation name: {text!r} (expected schema.name)")
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


def resolve(session: Session, text: str, kinds: tuple[str, ...] = ("r", "m")) -> RelationRef:
    """The relation named `text`, or UnknownObject naming it (nothing was changed)."""
    try:
        schema, name = parse_qualified_name(text)
    except ValueError as exc:
        raise UnknownObject(session.target.label, str(exc)) from None
    row = session.fetch_one(RESOLVE_SQL, {"schema": schema, "name": name, "kinds": list(kinds)}, RelationRef)
    if row is None:
        what = "index" if kinds == ("i",) else "table"
        raise UnknownObject(session.target.label, f"no {what} {schema}.{name} in database {session.target.database}")
    return row


def resolve_ref(session: Session, ref: RelationRef) -> RelationRef | None:
    """`ref` again by schema and name (it may have been dropped or rebuilt since), or None."""
    return session.fetch_one(
        RESOLVE_SQL, {"schema": ref.schema_name, "name": ref.name, "kinds": [ref.kind]}, RelationRef)
