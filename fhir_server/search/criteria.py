"""Interim matcher for conditional interactions: ``_id`` and ``identifier`` criteria only.

The search module replaces this Finder with full search; until then conditional create / update /
delete accept these two parameters (the foundation's contract) and reject the rest with 400.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, exists, func, literal_column, or_, select

from fhir_server.errors import NOT_SUPPORTED, FhirError
from fhir_server.storage.models import RESOURCE

if TYPE_CHECKING:
    from fhir_server.storage.repository import Repository

RES = RESOURCE


def split_token(value: str) -> tuple[str | None, str | None]:
    """FHIR token syntax: ``code``, ``system|code``, ``|code`` (no system), ``system|`` (any code)."""
    if "|" not in value:
        return None, value
    system, _, code = value.partition("|")
    return system, (code or None) if system else code


class CriteriaFinder:
    def find_ids(self, repo: Repository, resource_type: str, params: list[tuple[str, str]], *,
                 limit: int = 50, after: str | None = None) -> list[str]:
        conds: list[Any] = [RES.c.resource_type == resource_type, RES.c.deleted.is_(False)]
        for name, value in params:
            if name == "_id":
                conds.append(RES.c.id.in_(value.split(",")))
            elif name == "identifier":
                conds.append(or_(*(self._identifier(repo.dialect, v) for v in value.split(","))))
            else:
                raise FhirError(400, NOT_SUPPORTED, f"Search parameter '{name}' is not supported in "
                                                    f"conditional criteria (only _id and identifier)",
                                ("criteria",))
        if after is not None:
            conds.append(RES.c.id > after)
        rows = repo.conn.execute(select(RES.c.id).where(and_(*conds)).order_by(RES.c.id).limit(limit))
        return [r.id for r in rows]

    def _identifier(self, dialect: str, token: str) -> Any:
        system, value = split_token(token)
        if dialect == "postgresql":
            preds = []
            if system == "":
                preds.append("!exists(@.system)")
            elif system is not None:
                preds.append("@.system == $s")
            if value is not None:
                preds.append("@.value == $v")
            path = "$.identifier[*] ? (" + " && ".join(preds or ["true"]) + ")"
            return func.jsonb_path_exists(RES.c.content, literal_column(f"'{path}'::jsonpath"),
                                          func.jsonb_build_object("s", system or "", "v", value or ""))
        item: Any = select(literal_column("1")).select_from(
            func.json_each(RES.c.content, "$.identifier").table_valued("value").alias("j"))
        j_system = func.json_extract(literal_column("j.value"), "$.system")
        sub: list[Any] = []
        if system == "":
            sub.append(j_system.is_(None))
        elif system is not None:
            sub.append(j_system == system)
        if value is not None:
            sub.append(func.json_extract(literal_column("j.value"), "$.value") == value)
        return exists(item.where(and_(*sub)))
