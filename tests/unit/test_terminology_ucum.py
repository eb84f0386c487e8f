"""UCUM validation (terminology/ucum.py) through ucumvert, offline."""

from __future__ import annotations

import pytest

from terminology import ucum


@pytest.mark.parametrize("unit", ["mg", "mg/dL", "mmol/L", "kg/m2", "/min", "mm[Hg]", "10*3/uL", "%",
                                  "{beats}/min", "[in_i]", "Cel", "mL", "1", "g.m-2", "[IU]/L", "wk", "[pH]"])
def test_valid_units(unit: str) -> None:
    assert ucum.is_valid(unit)


@pytest.mark.parametrize("unit", ["", "xyz", "mg//dL", "cel", " mg", "mg/", "kg m2"])
def test_invalid_units(unit: str) -> None:
    assert not ucum.is_valid(unit)
