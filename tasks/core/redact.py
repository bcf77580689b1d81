"""Query texts fit to show: shortened, with password literals masked."""

import re

_PASSWORD_LITERAL = re.compile(r"(password\s*)('(?:[^']|'')*'|\"[^\"]*\"|\S+)", re.IGNORECASE)


def redact_sql(query: str, limit: int = 300) -> str:
    """Shorten a query text and mask password literals (ALTER ROLE ... PASSWORD '...')."""
    text = _PASSWORD_LITERAL.sub(r"\1'***'", " ".join(query.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"
