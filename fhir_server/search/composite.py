"""Index rows of composite parameters, per element (``composite_table.py`` says why and how they are laid out).

For each composite parameter of a type: its expression yields the elements (``Observation.component``, or
the resource itself for ``code-value-quantity``), each component's expression is evaluated relative to one
element, and its values become rows exactly as the component parameter's own index rows would be (the
Extractor's row building: token hashes, UCUM canonical quantities, date ranges), tagged with the element's
number and the component's position.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fhir_server.search.paths import compile_expression
from fhir_server.search.registry import SearchParam, split_union

if TYPE_CHECKING:
    from fhir_server.search.extract import Extractor, IndexRows

log = logging.getLogger(__name__)

Evaluate = Callable[[dict[str, Any]], list[Any]]
# the columns of each index kind that a composite row carries (the rest stay NULL)
COLUMNS = {
    "token": {"hash_value": "hash_value", "hash_sys_value": "hash_sys_value", "hash_sys": "hash_sys",
              "system": "system", "code": "code"},
    "string": {"hash_value": "hash_exact", "value_norm": "value_norm"},
    "date": {"low": "low", "high": "high"},
    "number": {"value": "value"},
    "quantity": {"value": "value", "system": "system", "code": "code", "unit": "unit"},
    "reference": {"target_type": "target_type", "target_id": "target_id", "target_url": "target_url"},
    "uri": {"hash_value": "hash_uri"},
}


def _elements(expression: str, resource_type: str) -> Evaluate:
    parts: list[Evaluate] = []
    for part in split_union(expression):
        if part == resource_type:  # ``Observation | Observation.component``: the resource is an element too
            parts.append(lambda resource: [resource])
        else:
            parts.append(compile_expression(part, resource_type))

    def evaluate(resource: dict[str, Any]) -> list[Any]:
        return [e for ev in parts for e in ev(resource) if isinstance(e, dict)]

    return evaluate


def _relative(expression: str) -> Evaluate:
    """A component expression (``value.as(Quantity)``) evaluated on one element."""
    return compile_expression(" | ".join(f"Element.{p}" for p in split_union(expression)), "Element")


class CompositeExtractor:
    def __init__(self, extractor: Extractor) -> None:
        self.extractor = extractor
        self._plans: dict[str, list[tuple[SearchParam, Evaluate, list[tuple[SearchParam, Evaluate]]]]] = {}

    def plan(self, resource_type: str) -> list[tuple[SearchParam, Evaluate, list[tuple[SearchParam, Evaluate]]]]:
        plan = self._plans.get(resource_type)
        if plan is None:
            plan = []
            registry = self.extractor.registry
            for sp in registry.stored_composites(resource_type):  # not unions, not conjunctions (registry.py)
                try:
                    components = []
                    for definition, expression in sp.components:
                        component = registry.component(resource_type, definition)
                        if component is None or not component.indexed:
                            raise LookupError(definition)
                        components.append((component, _relative(expression)))
                    plan.append((sp, _elements(sp.expression or "", resource_type), components))
                except Exception:  # a component we cannot index: that composite stays unsearchable
                    log.warning("composite search parameter %s: not indexed", sp.url)
            self._plans[resource_type] = plan
        return plan

    def rows(self, resource_type: str, resource_id: str, resource: dict[str, Any], main: IndexRows | None = None,
             main_values: dict[str, list[Any]] | None = None) -> list[dict[str, Any]]:
        """``main``: the resource's own index rows, and the values they came from, by parameter; a component
        evaluated on the resource itself with the same values reuses them instead of hashing again."""
        from fhir_server.search.extract import IndexRows

        by_param: dict[str, IndexRows] | None = None
        out: list[dict[str, Any]] = []
        built: dict[tuple[int, str], IndexRows] = {}  # code-value-* share their code rows on one element
        for sp, elements, components in self.plan(resource_type):
            try:
                found = elements(resource)
            except Exception:  # odd content never fails a write
                continue
            for elem, element in enumerate(found):
                try:
                    values = [evaluate(element) for _, evaluate in components]
                except Exception:
                    continue
                if not all(values):
                    continue  # an element lacking a component can never match: no rows for it
                parts: list[IndexRows] = []
                for (component, _), vals in zip(components, values, strict=True):
                    key = (id(element), component.code)
                    rows = built.get(key)
                    if rows is None and element is resource and main is not None and main_values is not None \
                            and main_values.get(component.code) == vals:
                        if by_param is None:
                            by_param = _by_param(main)
                        rows = built[key] = by_param.get(component.code) or IndexRows()
                    if rows is None:
                        rows = built[key] = IndexRows()
                        self.extractor.add_rows(rows, resource_type, resource_id, component, vals)
                    parts.append(rows)
                for part, rows in enumerate(parts):
                    for kind, batch in rows.rows.items():
                        columns = COLUMNS[kind]
                        for row in batch:
                            out.append({"resource_type": resource_type, "resource_id": resource_id,
                                        "param": sp.code, "elem": elem, "part": part, "sub": row["param"],
                                        **{col: row[src] for col, src in columns.items()}})
        return out


def _by_param(rows: IndexRows) -> dict[str, IndexRows]:
    """Rows by their parameter's code (``value-quantity:canonical`` goes with ``value-quantity``)."""
    from fhir_server.search.extract import IndexRows

    out: dict[str, IndexRows] = {}
    for kind, batch in rows.rows.items():
        for row in batch:
            out.setdefault(row["param"].split(":", 1)[0], IndexRows()).add(kind, row)
    return out
