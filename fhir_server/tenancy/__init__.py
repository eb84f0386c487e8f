"""Tenancy (issue 13): many hospitals on one server, each as isolated as on a server of its own.

- ``model``: tenant codes and statuses; ``tables``: the platform's shared tables.
- ``engines``: a tenant's schema (PostgreSQL, on the shared pool) or file (SQLite).
- ``store``: create, list, suspend, activate, delete tenants (migrating a new one to the current head).
- ``stacks``: one FhirServer (and its authorization server, outbox, background work) per tenant, made on
  first use in a process; ``routing``: ``/fhir/{tenant}/...`` and ``/t/{tenant}/...`` choose the stack.
"""
