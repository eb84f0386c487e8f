"""UCUM canonical form of quantities for search (``5.4|http://unitsofmeasure.org|mg`` finds a stored 5400 ug).

ucumvert parses the UCUM expression and maps it onto pint units (``PintUcumRegistry.from_ucum``); pint turns
it into SI base units. The canonical form of ``value unit`` is ``(value * factor, base units)``: ``mg`` is
1e-6 ``kilogram``, ``mg/dL`` 0.01 ``kilogram / meter ** 3``. Units ucumvert or pint cannot convert (and offset
units such as ``Cel``, which pint refuses to multiply) have no canonical form: those quantities match by
system and code only, as before. Values are rounded to 12 significant digits so that 5400 ug and 5.4 mg
are the same number after conversion.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

SYSTEM = "http://unitsofmeasure.org"
_lock = threading.Lock()  # one parser and registry shared by every request thread


@lru_cache(maxsize=1)
def _registry() -> Any:
    from ucumvert import PintUcumRegistry

    return PintUcumRegistry()


@lru_cache(maxsize=4096)
def _factor(unit: str) -> tuple[float, str] | None:
    if not unit or len(unit) > 255:
        return None
    with _lock:
        try:
            base = (1 * _registry().from_ucum(unit)).to_base_units()
            factor = float(base.magnitude)
            units = str(base.units)
        except Exception:  # not UCUM, not convertible, an offset unit: no canonical form
            return None
    return (factor, units) if factor > 0 else None


def round12(value: float) -> float:
    return float(f"{value:.12g}")


def canonical(value: float, unit: str) -> tuple[float, str] | None:
    """``(value in base units, base unit text)`` for a UCUM unit code, or None."""
    found = _factor(unit)
    if found is None:
        return None
    return round12(value * found[0]), found[1]


def factor(unit: str) -> tuple[float, str] | None:
    """The multiplier to base units and the base unit text (search values convert their range bounds)."""
    return _factor(unit)


def convert(value: float, unit: str, target: str) -> float | None:
    """``value unit`` in ``target`` units, offset units included (98.6 ``[degF]`` is 37 ``Cel``): the hospital's
    plausibility limits are written in one unit whatever unit a device reports. None: not convertible."""
    if not unit or not target or len(unit) > 255:
        return None
    if unit == target:
        return value
    with _lock:
        try:
            reg = _registry()
            source, wanted = reg.from_ucum(unit), reg.from_ucum(target)
            quantity = reg.Quantity(value * float(source.magnitude), source.units)
            return round12(float(quantity.to(wanted.units).magnitude) / float(wanted.magnitude))
        except Exception:  # not UCUM, or not the same dimension
            return None
