"""Message templates per language and event, as data (templates.json, ``string.Template``): add a language by
adding its block there. Placeholders: $name, $when, $with, $report; a missing value takes the language's
``defaults`` (e.g. "your doctor")."""

from __future__ import annotations

import json
from importlib import resources
from string import Template

TEMPLATES: dict[str, dict[str, dict[str, str]]] = json.loads(
    resources.files(__package__).joinpath("templates.json").read_text(encoding="utf-8"))


def render(language: str, event: str, values: dict[str, str]) -> tuple[str, str]:
    """(subject, text) of ``event`` in ``language``; unknown placeholders are left as written."""
    block = TEMPLATES[language]
    filled = {**block.get("defaults", {}), **{k: v for k, v in values.items() if v}}
    template = block[event]
    return (Template(template["subject"]).safe_substitute(filled),
            Template(template["text"]).safe_substitute(filled))
