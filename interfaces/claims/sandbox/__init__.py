"""Simulators for the claims adapters: an HCX gateway + payers (``python -m interfaces.claims.sandbox``)."""
