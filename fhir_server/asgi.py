"""ASGI entry point for process managers: ``uvicorn fhir_server.asgi:app``."""

from fhir_server.app import create_app

app = create_app()
