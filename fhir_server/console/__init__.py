"""The operator console (``/console``, ``/t/{tenant}/console``): server-rendered pages for the people who run
the interfaces. Sign-in is the server's own SMART sign-in (session.py); admins and interface analysts only.
See docs/console.md."""

from __future__ import annotations

from fastapi import FastAPI


def install(app: FastAPI) -> None:
    from fhir_server.console import hl7, home, ops, people, resources, subscriptions

    for module in (home, hl7, ops, subscriptions, people, resources):
        app.include_router(module.router)
