"""Small readers of FHIR content the workflow areas share: references, codings, token escapes."""

from __future__ import annotations

from typing import Any


def ref_id(reference: Any, resource_type: str) -> str | None:
    """The id in a Reference to ``resource_type`` (relative, absolute or versioned); None otherwise."""
    text = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(text, str):
        return None
    parts = text.split("/_history/")[0].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == resource_type and parts[-1]:
        return parts[-1]
    return None


def codes(concept: Any, system: str) -> list[str]:
    """The codes of a CodeableConcept in ``system``."""
    if not isinstance(concept, dict):
        return []
    return [c["code"] for c in concept.get("coding") or [] if c.get("system") == system and c.get("code")]


def token(system: str, value: str) -> str:
    """``system|value`` as a token search value (``\\``, ``|``, ``,`` and ``$`` escaped)."""
    def esc(text: str) -> str:
        for ch in ("\\", "|", ",", "$"):
            text = text.replace(ch, "\\" + ch)
        return text
    return f"{esc(system)}|{esc(value)}"
