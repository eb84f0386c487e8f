"""Hospital roles as data: what any token of a user with that role may do at most, per resource type.

Permissions use the SMART v2 letters (c create, r read, u update, d delete, s search). ``"*"`` is every
type not listed. A type a role does not list, and no ``"*"``, is out of reach for that role entirely.
Effective rights of a user token = requested scopes ∩ the client's allowed scopes ∩ this table.
"""

from __future__ import annotations

ALL = "cruds"
READ = "rs"
FINANCIAL = ["Account", "ChargeItem", "ChargeItemDefinition", "Claim", "ClaimResponse", "Coverage",
             "CoverageEligibilityRequest", "CoverageEligibilityResponse", "ExplanationOfBenefit", "Invoice",
             "PaymentNotice", "PaymentReconciliation", "Contract"]
ADMINISTRATIVE = ["Patient", "Practitioner", "PractitionerRole", "Organization", "Location", "HealthcareService",
                  "Endpoint", "Schedule", "Slot", "Appointment", "AppointmentResponse", "RelatedPerson"]

ROLE_PERMISSIONS: dict[str, dict[str, str]] = {
    "admin": {"*": ALL},
    "doctor": {"*": ALL},
    "nurse": {"*": "crus"},
    # Front desk: registration and scheduling only, no clinical content (no Observation, Condition, ...;
    # the clinical elements of Encounter, Appointment and Patient are masked: masks.py). Subscriptions: a
    # scheduling board told of appointment and encounter changes (each notification masked the same way).
    "receptionist": {**dict.fromkeys(ADMINISTRATIVE, "crus"), "Appointment": ALL, "Encounter": "crus",
                     "Coverage": "crus", "Subscription": ALL},
    # Billing reads clinical records to code claims but never writes them.
    "billing_officer": {"*": READ, **dict.fromkeys(FINANCIAL, ALL)},
    "lab_technician": {"*": READ, "Observation": "crus", "DiagnosticReport": "crus", "Specimen": "crus",
                       "ServiceRequest": "rus"},
    # Stock comes in by SupplyDelivery and is ordered by SupplyRequest (fhir_server/workflows/pharmacy).
    "pharmacist": {"*": READ, "Medication": "crus", "MedicationDispense": "crus", "MedicationRequest": "rus",
                   "MedicationKnowledge": "crus", "SupplyDelivery": "crus", "SupplyRequest": "crus"},
    "radiologist": {"*": READ, "ImagingStudy": "crus", "DiagnosticReport": "crus", "Observation": "crus",
                    "Media": "crus"},
    # Hospital management: the dashboard's reports (Measure/$evaluate-measure, fhir_server/workflows/reports:
    # aggregate figures only) and the hospital's structure they are broken down by; no patient's record.
    "manager": {**dict.fromkeys(["Organization", "Location", "HealthcareService", "Practitioner",
                                 "PractitionerRole", "Measure", "MeasureReport"], READ)},
    # A patient reads their own record; the compartment restriction is applied apart (access.py).
    "patient": {"*": READ},
    # Runs the interfaces from the console (fhir_server/console): HL7 v2 messages, the outbox, bulk jobs and
    # Subscriptions (their status); no patient record. Users, clients and the resource browser are admins'.
    "interface-analyst": {"Subscription": READ},
}
# The audit trail: only admins read it, and nobody writes it through the API (fhir_server.audit).
for _role, _table in ROLE_PERMISSIONS.items():
    _table["AuditEvent"] = READ if _role == "admin" else ""
ROLES = tuple(ROLE_PERMISSIONS)
# EHR-side users who may open an app in a chart (POST /auth/launch), for a patient they may read; a patient
# user never creates launch contexts, and a backend needs the ``launch`` scope (fhir_server/auth/launch.py).
EHR_LAUNCH_ROLES = frozenset(ROLES) - {"patient", "interface-analyst"}
# Who may sign in to the operator console (fhir_server/console); only admins manage users and clients there.
CONSOLE_ROLES = frozenset({"admin", "interface-analyst"})


def role_allows(role: str, resource_type: str, permission: str) -> bool:
    table = ROLE_PERMISSIONS.get(role)
    if table is None:
        return False
    allowed = table.get(resource_type, table.get("*", ""))
    return permission in allowed
