"""The simple full-text syntax of ``_text`` / ``_content`` (search.html#text): words are ANDed, ``OR``
between words or phrases makes alternatives, ``"a phrase"`` matches the words in order, ``AND`` may be
written. A comma between values is a further OR (the parser splits those). Terms are folded like documents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fhir_server.search.fulltext.documents import words as words_of


@dataclass(frozen=True)
class Term:
    words: tuple[str, ...]  # folded words; more than one: a phrase (in this order, adjacent)

    @property
    def phrase(self) -> bool:
        return len(self.words) > 1


@dataclass(frozen=True)
class TextQuery:
    """Alternatives (OR) of conjunctions (AND) of terms."""

    any_of: tuple[tuple[Term, ...], ...]


class TextSyntaxError(ValueError):
    pass


def parse_text(text: str) -> TextQuery:
    if text.count('"') % 2:
        raise TextSyntaxError("unbalanced double quote")
    groups: list[list[Term]] = [[]]
    for quoted, bare in re.findall(r'"([^"]*)"|(\S+)', text):
        if bare == "OR":
            if not groups[-1]:
                raise TextSyntaxError("OR needs a word or phrase on both sides")
            groups.append([])
            continue
        if bare == "AND":
            continue
        words = tuple(words_of(quoted if quoted else bare))
        if words:  # an unquoted "7.2" or "e-mail" is several words too: a phrase, as it was written
            groups[-1].append(Term(words))
    if not groups[-1]:
        raise TextSyntaxError("nothing to search for" if len(groups) == 1 else "OR needs a word or phrase "
                                                                               "on both sides")
    return TextQuery(tuple(tuple(g) for g in groups))
