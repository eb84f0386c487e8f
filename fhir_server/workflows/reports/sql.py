"""The few SQL expressions that differ between PostgreSQL (jsonb) and SQLite (JSON1), so each report is one
statement written once. Paths are FHIR element paths (``totalGross.value``); ``alias`` names the row whose
``content`` is read."""

from __future__ import annotations

from dataclasses import dataclass


def _json_path(path: str) -> str:
    """``a.0.b`` -> SQLite's ``$.a[0].b``."""
    return "$" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in path.split("."))


@dataclass(frozen=True)
class Dialect:
    postgresql: bool

    @property
    def false(self) -> str:
        """A JSON false as ``text()`` reads it (SQLite's json_extract gives 0)."""
        return "'false'" if self.postgresql else "0"

    def text(self, path: str, alias: str = "r", column: str = "content") -> str:
        """The element as text (NULL when absent)."""
        if self.postgresql:
            return f"({alias}.{column} #>> '{{{','.join(path.split('.'))}}}')"
        return f"json_extract({alias}.{column}, '{_json_path(path)}')"

    def number(self, path: str, alias: str = "r", column: str = "content") -> str:
        """The element as a decimal number (FHIR decimals are JSON numbers)."""
        if self.postgresql:
            return f"CAST({self.text(path, alias, column)} AS NUMERIC)"
        return f"CAST({self.text(path, alias, column)} AS REAL)"

    def elements(self, path: str, alias: str = "r", name: str = "e") -> str:
        """A FROM item with one row per element of the array at ``path``, its JSON in ``{name}.value``."""
        if self.postgresql:
            node = f"{alias}.content #> '{{{','.join(path.split('.'))}}}'"
            return (f"jsonb_array_elements(CASE WHEN jsonb_typeof({node}) = 'array' THEN {node} "
                    f"ELSE '[]'::jsonb END) AS {name}")
        return f"json_each({alias}.content, '{_json_path(path)}') AS {name}"

    def extension(self, url_param: str, value_path: str, alias: str = "r") -> str:
        """A correlated subquery: ``value_path`` of the first extension of the row whose url is ``:url_param``."""
        value = self.text(value_path, "x", "value")
        return f"(SELECT {value} FROM {self.elements('extension', alias, 'x')} " \
               f"WHERE {self.text('url', 'x', 'value')} = :{url_param} LIMIT 1)"

    def days(self, start: str, end: str) -> str:
        """Days (fractional) from one instant text to another."""
        if self.postgresql:
            return f"(EXTRACT(EPOCH FROM (CAST({end} AS TIMESTAMPTZ) - CAST({start} AS TIMESTAMPTZ))) / 86400.0)"
        return f"(julianday({end}) - julianday({start}))"

    def least(self, a: str, b: str) -> str:
        return f"LEAST({a}, {b})" if self.postgresql else f"MIN({a}, {b})"

    def greatest(self, a: str, b: str) -> str:
        return f"GREATEST({a}, {b})" if self.postgresql else f"MAX({a}, {b})"
