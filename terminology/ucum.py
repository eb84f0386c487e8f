"""UCUM unit validation (http://unitsofmeasure.org) through ucumvert's grammar of the UCUM specification.

UCUM is a grammar, not a list, so it is not stored as concepts: $validate-code on the UCUM system and
value sets including all of UCUM ask ``is_valid``. The parser is built once (about a second), on first use.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

SYSTEM = "http://unitsofmeasure.org"
_lock = threading.Lock()


@lru_cache(maxsize=1)
def _parser() -> Any:
    from ucumvert import get_ucum_parser

    return get_ucum_parser()


@lru_cache(maxsize=4096)
def is_valid(unit: str) -> bool:
    """True for a valid UCUM case-sensitive unit expression (``mg/dL``, ``mm[Hg]``, ``10*3/uL``, ``{beats}/min``)."""
    if not unit or unit != unit.strip() or len(unit) > 255:
        return False
    with _lock:  # one parser shared by every request thread
        try:
            _parser().parse(unit)
        except Exception:  # lark's parse and lexer errors: not a UCUM expression
            return False
    return True
