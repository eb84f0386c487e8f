"""SMART-on-FHIR authorization: users with hospital roles, clients, tokens, scopes -> access policy."""
