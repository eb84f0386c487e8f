"""Checks a SearchParameter resource before it joins the registry: code, base, type, expression.

The structure validator already holds ``type`` and ``base`` to their required code lists; this adds what it
cannot see. A failure is a 422 OperationOutcome naming the element. FHIRPath syntax is checked with
fhirpathpy's own ANTLR grammar, but strictly (fhirpathpy itself recovers from syntax errors silently).
"""

from __future__ import annotations

import re
from typing import Any

from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from fhir_server.definitions import resource_types
from fhir_server.errors import INVALID, FhirError, Issue
from fhir_server.search.paths import compile_expression
from fhir_server.search.registry import NOT_DOMAIN, parts_for

CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-.]{0,99}")
TYPES = {"number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special"}


class _Raise(ErrorListener):
    def syntaxError(self, recognizer: Any, offending: Any, line: int, column: int, msg: str,
                    e: Any) -> None:
        raise ValueError(f"at character {column + 1}: {msg}")


def check_fhirpath(text: str) -> None:
    """Raise ValueError if ``text`` is not one whole FHIRPath expression."""
    lexer = FHIRPathLexer(InputStream(text))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_Raise())
    stream = CommonTokenStream(lexer)
    parser = FHIRPathParser(stream)
    parser.removeErrorListeners()
    parser.addErrorListener(_Raise())
    parser.expression()
    if stream.LA(1) != Token.EOF:
        raise ValueError(f"unexpected {stream.LT(1).text!r} after the expression")


def _unprocessable(element: str, message: str) -> FhirError:
    return FhirError(422, [Issue(INVALID, message, expression=(f"SearchParameter.{element}",))])


def applies_to(base: str) -> list[str]:
    types = resource_types()
    if base == "Resource":
        return sorted(types)
    if base == "DomainResource":
        return sorted(types - NOT_DOMAIN)
    return [base] if base in types else []


def check_search_parameter(sp: dict[str, Any]) -> None:
    code = sp.get("code")
    if not isinstance(code, str) or not CODE.fullmatch(code):
        raise _unprocessable("code", f"code {code!r} is not a usable search parameter name "
                                     "(letters, digits, '-', '_', '.'; not starting with '_' or '-')")
    kind = sp.get("type")
    if kind not in TYPES:
        raise _unprocessable("type", f"type {kind!r} is not a search parameter type")
    bases = sp.get("base") or []
    for i, base in enumerate(bases):
        if not applies_to(base):
            raise _unprocessable(f"base[{i}]", f"base {base!r} is not a resource type")
    if not bases:
        raise _unprocessable("base", "a SearchParameter needs at least one base resource type")
    expression = sp.get("expression")
    if kind == "special":
        return  # answered by code, never by an expression (this server has none of its own)
    if kind == "composite" and not sp.get("component"):
        raise _unprocessable("component", "a composite parameter needs components")
    if not isinstance(expression, str) or not expression.strip():
        raise _unprocessable("expression", f"a {kind} parameter needs an expression")
    try:
        check_fhirpath(expression)
    except ValueError as exc:
        raise _unprocessable("expression", f"expression {expression!r} is not valid FHIRPath: {exc}") from None
    for base in bases:
        for rtype in applies_to(base):
            parts = parts_for(expression, rtype)
            if not parts and base not in ("Resource", "DomainResource"):
                raise _unprocessable("expression", f"no part of the expression starts with {base} "
                                                   "(each part is a path from its base, e.g. Patient.name)")
            if parts:
                try:
                    compile_expression(" | ".join(parts), rtype)
                except Exception as exc:  # fhirpathpy's own compile errors
                    raise _unprocessable("expression", f"expression cannot be compiled for {rtype}: "
                                                       f"{type(exc).__name__}") from None
