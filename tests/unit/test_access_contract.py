"""The access contract of issue 12, checked on the source itself: acting as the system is a visible choice
made in known places, and no entry point can default to "no access given" (which once meant full access).

A new ``as_system(...)`` call fails this test until its file joins ``ACTS_AS_SYSTEM`` below, so every new
use is seen in review; ``access=None`` or an ``access`` parameter/field defaulting to None fails outright.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fhir_server", "interfaces", "terminology", "mappings")

# Where the server acts beyond its caller, and why (keep the reasons true when adding a file).
ACTS_AS_SYSTEM = {
    "fhir_server/api/auth.py": "local mode without a token (FHIR_AUTH_REQUIRED=false); standalone launch lookup",
    "fhir_server/audit/recorder.py": "the audit trail is the server's own record",
    "fhir_server/auth/stored.py": "restoring a stored server-side access (a job or subscription it started)",
    "fhir_server/cli.py": "fhir-server load (operator command)",
    "fhir_server/tenancy/sharing.py": "a patient share's Consents, written in both hospitals by the server "
                                       "after checking the sharing or answering user's role",
    "fhir_server/packages/cli.py": "fhir-server packages install (operator command)",
    "fhir_server/search/terms.py": "terminology definitions behind :in / :below",
    "fhir_server/subscriptions/delivery.py": "rest-hook bookkeeping: reading the Subscription, recording status",
    "fhir_server/subscriptions/engine.py": "subscription matching in SQL; SubscriptionTopic definitions",
    "fhir_server/workflows/pharmacy/alerts.py": "pharmacy alerts: the server's own low-stock/expiry Flags",
    "fhir_server/workflows/pharmacy/dispense.py": "a dispense checks its prescription and takes stock (ledger)",
    "fhir_server/workflows/pharmacy/knowledge.py": "the drug class and interaction tables, whoever prescribes",
    "fhir_server/workflows/pharmacy/safety.py": "medication safety reads all allergies/prescriptions of the patient",
    "fhir_server/workflows/pharmacy/stock.py": "the stock ledger: records and movements only the server writes",
    "fhir_server/workflows/frontdesk/merge.py": "Patient/$merge and $unmerge move references in every resource, "
                                                "after checking the caller's role",
    "fhir_server/workflows/scheduling/booking.py": "booking rules see every appointment of a practitioner or "
                                                   "patient, and set the status of the slots booked",
    "fhir_server/workflows/scheduling/checkin.py": "a doctor's day queue: token numbers count every check-in",
    "fhir_server/workflows/scheduling/noshow.py": "the no-show Flag is the server's record on the patient",
    "fhir_server/workflows/scheduling/slots.py": "Schedule and Slots derived from a role the caller may write",
    "fhir_server/validation/setup.py": "CapabilityStatement.supportedProfile: the server describes itself",
    "fhir_server/workflows/notifications/record.py": "notifications: the patient's contact preferences read, "
                                                     "each message recorded as a Communication, sent by the outbox",
    "fhir_server/workflows/laboratory/critical.py": "critical limits as configured; the alert is the server's record",
    "fhir_server/workflows/laboratory/specimens.py": "barcode uniqueness and an order's specimens, seen by all",
    "fhir_server/workflows/laboratory/turnaround.py": "turnaround and completion recorded on the order",
    "fhir_server/workflows/wards/beds.py": "a bed's status follows admissions; the discharge summary, seen by all",
    "interfaces/abdm/api.py": "ABDM gateway calls in: admitted by the gateway's signed token, per request",
    "interfaces/abdm/hip_linking.py": "ABDM discovery and linking: the patient the gateway asks about",
    "interfaces/abdm/service.py": "ABDM outbox jobs: gateway callbacks, data pushes, erasure at dataEraseAt",
    "interfaces/abdm/transfer.py": "ABDM health information: only records within a granted, current Consent",
    "interfaces/claims/api.py": "HCX callbacks in: admitted by the gateway's signed, encrypted envelope",
    "interfaces/claims/fhir_payer.py": "a FHIR payer's polled answer, stored on the claim it answers",
    "interfaces/claims/inbound.py": "HCX callbacks: a verified response applied to its own claim",
    "interfaces/claims/outbound.py": "HCX requests out from the outbox: the claim's own records only",
    "interfaces/claims/sandbox/demo.py": "the claims demo (not the server): installs the IG, seeds data",
    "interfaces/mllp/outbound.py": "HL7 v2 orders out: read the order, record the lab's ACK",
    "interfaces/mllp/result_match.py": "HL7 v2 results from an admitted sender: find the order they report on",
    "interfaces/mllp/query.py": "HL7 v2 QBP^Q11 from an admitted analyser: its pending orders by barcode",
    "interfaces/mllp/process.py": "HL7 v2 inbound, per sender (the listener's configuration admits senders)",
    "terminology/cache.py": "the ValueSet cache shared by every caller (the caller's access applies after)",
    "terminology/cli.py": "fhir-server terminology load-core / import, and the core preload on serve",
}


def _sources() -> list[tuple[str, ast.Module]]:
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            out.append((path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), str(path))))
    return out


def _called(node: ast.Call) -> str | None:
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _is_none(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _system_calls(tree: ast.Module) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _called(n) == "as_system"]


def _access_defaults_to_none(name: str, tree: ast.Module) -> list[str]:
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):  # f(access=None)
            found += [f"{name}:{node.lineno} {k.arg}=None" for k in node.keywords
                      if k.arg is not None and k.arg.endswith("access") and _is_none(k.value)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):  # access: X | None = None
            if node.target.id.endswith("access") and _is_none(node.value):
                found.append(f"{name}:{node.lineno} field {node.target.id} = None")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):  # def f(access: X | None = None)
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            pairs = [*zip(positional[len(positional) - len(args.defaults):], args.defaults, strict=True),
                     *zip(args.kwonlyargs, args.kw_defaults, strict=True)]
            found += [f"{name}:{node.lineno} {node.name}({a.arg}=None)" for a, d in pairs
                      if a.arg.endswith("access") and _is_none(d)]
    return found


def test_as_system_is_called_only_where_the_allow_list_says() -> None:
    calling = {name for name, tree in _sources() if _system_calls(tree)}
    assert calling - set(ACTS_AS_SYSTEM) == set(), "new as_system() callers: add them (and why) to ACTS_AS_SYSTEM"
    assert set(ACTS_AS_SYSTEM) - calling == set(), "files that no longer act as the system: drop them"


def test_every_as_system_call_gives_a_reason() -> None:
    for name, tree in _sources():
        for call in _system_calls(tree):
            assert call.args and not _is_none(call.args[0]), f"{name}:{call.lineno}: as_system() without a reason"


def test_no_access_defaults_to_none() -> None:
    found = [f for name, tree in _sources() for f in _access_defaults_to_none(name, tree)]
    assert found == [], "access must be given, never defaulted to None: " + "; ".join(found)


def test_the_checks_find_what_they_forbid() -> None:
    """So that an empty result above means something."""
    tree = ast.parse("def f(x, access=None): pass\ndef g(*, job_access: int | None = None): pass\n"
                     "class C:\n    access: int | None = None\nh(access=None)\nstorage.as_system('why')\n"
                     "def ok(access, other=None): pass\nk(access=a)\n")
    assert len(_access_defaults_to_none("t", tree)) == 4
    assert len(_system_calls(tree)) == 1
