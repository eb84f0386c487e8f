"""Deactivate, never delete, and merge (issue 17 item 3).

- A DELETE of a Patient with clinical data (anything in its compartment but the record-keeping AuditEvent and
  Provenance) is refused: 409 ``patient-has-clinical-data``, set ``active=false`` instead.
- ``Patient/$merge`` (R5's patient-merge as an R4 operation): ``source-patient`` gets a ``replaced-by`` link and
  ``active=false``, ``target-patient`` (or ``result-patient``, its new content) a ``replaces`` link, and every
  reference to the source (found through the reference search index) moves to the target, all in the
  operation's one transaction, with a Provenance (activity ``merge``) whose entities are the versions before.
- ``Patient/$unmerge`` (``provenance``: that Provenance) puts back, from those versions, exactly the references
  the merge moved, the source's ``active`` and both patients' links, and records its own Provenance.

Only an admin, a doctor or a receptionist (or a backend administrator) merges. References in resources the
caller may not write (a receptionist and Observations) still move: the role check is the permission, and
the move runs as the system, visibly below.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from fhir_server.errors import FORBIDDEN, INVALID, FhirError, Issue, operation_outcome
from fhir_server.hooks import WriteEvent
from fhir_server.rest.request import FhirRequest, FhirResponse
from fhir_server.search.compartment import compartment_params
from fhir_server.search.tables import REFERENCE
from fhir_server.storage.access import as_system
from fhir_server.storage.repository import Repository, Version, instant
from fhir_server.workflows.frontdesk.registration import merged
from fhir_server.workflows.rules import rule_violation

MERGE_DEFINITION = "http://hl7.org/fhir/OperationDefinition/Patient-merge"
UNMERGE_DEFINITION = "https://fhir-server.dev/OperationDefinition/Patient-unmerge"
LIFECYCLE = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
MERGERS = frozenset({"admin", "doctor", "receptionist"})
# Records about the record, not clinical data: they neither block a delete nor move in a merge.
RECORD_KEEPING = frozenset({"AuditEvent", "Provenance"})

Path = tuple[str | int, ...]


def refuse_delete_with_data(event: WriteEvent, repo: Repository | None) -> None:
    """BEFORE_COMMIT: a Patient with clinical data is deactivated, never deleted."""
    if event.interaction != "delete" or event.resource_type != "Patient" or repo is None:
        return
    members = compartment_params()["Patient"]
    rows = repo.execute(select(REFERENCE.c.resource_type, REFERENCE.c.param).distinct().where(
        REFERENCE.c.target_type == "Patient", REFERENCE.c.target_id == event.resource_id))
    held = sorted({r.resource_type for r in rows if r.resource_type not in RECORD_KEEPING | {"Patient"}
                   and r.param in members.get(r.resource_type, ())})
    if held:
        raise rule_violation(409, "patient-has-clinical-data",
                             f"Patient/{event.resource_id} has clinical data ({', '.join(held)}): a patient's "
                             "record is kept; set Patient.active to false instead of deleting", ("Patient",))


def _may_merge(repo: Repository) -> None:
    role = getattr(repo.access, "role", None)
    allowed = role in MERGERS if role is not None else repo.access.administers()
    if not allowed or not repo.access.may("Patient", "u"):
        raise FhirError(403, FORBIDDEN, "Merging patients is for an admin, a doctor or a receptionist", ("Patient",))


def _params(req: FhirRequest, op: str) -> dict[str, tuple[int, dict[str, Any]]]:
    body = req.json_body()
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FhirError(400, INVALID, f"The body of ${op} must be a Parameters resource", ("Parameters",))
    return {p["name"]: (i, p) for i, p in enumerate(body.get("parameter") or [])
            if isinstance(p, dict) and isinstance(p.get("name"), str)}


def _patient_ref(params: dict[str, tuple[int, dict[str, Any]]], name: str) -> str:
    if name not in params:
        raise FhirError(400, INVALID, f"The '{name}' parameter (a Reference to a Patient) is required", ("Parameters",))
    i, p = params[name]
    ref = (p.get("valueReference") or {}).get("reference") if isinstance(p.get("valueReference"), dict) else None
    if not isinstance(ref, str) or not ref.startswith("Patient/") or ref.count("/") != 1:
        raise FhirError(400, INVALID, f"'{name}' must be a valueReference to Patient/[id]",
                        (f"Parameters.parameter[{i}].valueReference",))
    return ref.split("/", 1)[1]


def _forms(base: str, patient_id: str) -> set[str]:
    return {f"Patient/{patient_id}", f"{base}/Patient/{patient_id}"} if base else {f"Patient/{patient_id}"}


def reference_paths(node: Any, forms: set[str], path: Path = ()) -> list[Path]:
    """Paths to every Reference in ``node`` whose reference is one of ``forms``."""
    out: list[Path] = []
    if isinstance(node, dict):
        if node.get("reference") in forms:
            out.append(path)
        for key, value in node.items():
            if isinstance(value, dict | list):
                out += reference_paths(value, forms, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += reference_paths(value, forms, (*path, i))
    return out


def _at(node: Any, path: Path) -> Any:
    for step in path:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _link(patient: dict[str, Any], other: str, kind: str) -> dict[str, Any]:
    links = [lk for lk in patient.get("link") or [] if not (isinstance(lk, dict) and lk.get("type") == kind
                                                           and (lk.get("other") or {}).get("reference") == other)]
    return {**patient, "link": [*links, {"other": {"reference": other}, "type": kind}]}


def _unlink(patient: dict[str, Any], other: str, kind: str) -> dict[str, Any]:
    links = [lk for lk in patient.get("link") or [] if not (isinstance(lk, dict) and lk.get("type") == kind
                                                           and (lk.get("other") or {}).get("reference") == other)]
    out = {k: v for k, v in patient.items() if k != "link"}
    return {**out, "link": links} if links else out


def _versioned(v: Version) -> dict[str, str]:
    return {"reference": f"{v.reference}/_history/{v.version_id}"}


def _provenance(repo: Repository, activity: str, changed: list[tuple[Version, Version]],
                extra_entities: list[dict[str, Any]]) -> Version:
    """A Provenance of what changed: targets the new versions, entities (role revision) the ones before."""
    fhir_user = getattr(repo.access, "fhir_user", None)
    who = {"reference": fhir_user} if isinstance(fhir_user, str) else \
        {"display": getattr(repo.access, "subject", None) or getattr(repo.access, "reason", None) or "the server"}
    content = {
        "resourceType": "Provenance",
        "target": [_versioned(after) for _, after in changed],
        "recorded": instant(datetime.now(UTC)),
        "activity": {"coding": [{"system": LIFECYCLE, "code": activity}]},
        "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                        "code": "author"}]}, "who": who}],
        "entity": [*extra_entities, *({"role": "revision", "what": _versioned(before)} for before, _ in changed)],
    }
    return repo.create("Provenance", content)


def merge_patients(repo: Repository, base: str, source: Version, target: Version, result: dict[str, Any] | None,
                   referrers: list[tuple[str, str]], entities: list[dict[str, Any]] | None = None
                   ) -> tuple[Version, Version]:
    """The merge itself, inside the caller's transaction with full access (the caller checked the rules and
    read both patients for update): every reference to ``source`` moves to ``target``, ``source`` gets
    ``replaced-by`` and ``active=false``, ``target`` (or ``result``, its new content) ``replaces``; a
    Provenance (activity merge, ``entities`` added, e.g. the HL7 v2 message) records the versions before.
    Returns the target's new version and the Provenance. Also what an HL7 v2 merge (A34/A39/A40/A47) runs
    when the front desk is on (interfaces/mllp/merges.py)."""
    changed = Merge._move(repo, base, referrers, source.id, target.id)
    src_new = {**_link(source.content or {}, f"Patient/{target.id}", "replaced-by"), "active": False}
    after_source, _ = repo.update("Patient", source.id, src_new)
    new_target = _link(result if result is not None else copy.deepcopy(target.content or {}),
                       f"Patient/{source.id}", "replaces")
    after_target, _ = repo.update("Patient", target.id, new_target)
    changed += [(source, after_source), (target, after_target)]
    return after_target, _provenance(repo, "merge", changed, entities or [])


class Merge:
    """``POST [base]/Patient/$merge``."""

    def __call__(self, req: FhirRequest, repo: Repository, resource_type: str | None,
                 resource_id: str | None) -> FhirResponse:
        _may_merge(repo)
        params = _params(req, "merge")
        source_id, target_id = _patient_ref(params, "source-patient"), _patient_ref(params, "target-patient")
        if source_id == target_id:
            raise rule_violation(422, "merge-same-patient", "A patient cannot be merged into itself",
                                 ("Parameters.parameter",))
        seen_source, seen_target = repo.read("Patient", source_id), repo.read("Patient", target_id)  # auth: caller's
        self.check(seen_source, seen_target)
        result = self._result(params, seen_target)
        if result is not None:  # elements masked for the caller's role keep their stored values
            result = repo.access.restore_masked("Patient", result, repo.current("Patient", target_id))
        preview = "preview" in params and params["preview"][1].get("valueBoolean") is True
        with repo.acting_as(as_system("Patient/$merge moves every reference to the merged patient")):
            source = repo.current("Patient", source_id, for_update=True)
            target = repo.current("Patient", target_id, for_update=True)
            assert source is not None and target is not None
            referrers = self.referrers(repo, source_id, target_id)
            if preview:
                return self._answer(req, params, seen_target.content or {}, None, len(referrers), preview=True)
            after_target, provenance = merge_patients(repo, req.base_url, source, target, result, referrers)
        shown = repo.access.mask(after_target)  # the caller's view of the result
        return self._answer(req, params, shown.content or {}, provenance, len(referrers), preview=False)

    @staticmethod
    def check(source: Version, target: Version) -> None:
        if merged(source.content or {}):
            raise rule_violation(409, "merge-source-merged", f"{source.reference} is already merged",
                                 ("source-patient",))
        if merged(target.content or {}) or (target.content or {}).get("active") is False:
            raise rule_violation(409, "merge-target-inactive", f"{target.reference} is inactive or merged: merge "
                                 "into the patient that stays", ("target-patient",))

    @staticmethod
    def _result(params: dict[str, tuple[int, dict[str, Any]]], target: Version) -> dict[str, Any] | None:
        if "result-patient" not in params:
            return None
        i, p = params["result-patient"]
        result = p.get("resource")
        if not isinstance(result, dict) or result.get("resourceType") != "Patient" or result.get("id") != target.id:
            raise rule_violation(422, "merge-result-not-target", "result-patient must be the target Patient (its id)",
                                 (f"Parameters.parameter[{i}].resource",))
        return {k: v for k, v in result.items() if k != "meta"}

    @staticmethod
    def referrers(repo: Repository, source_id: str, target_id: str) -> list[tuple[str, str]]:
        rows = repo.execute(select(REFERENCE.c.resource_type, REFERENCE.c.resource_id).distinct().where(
            REFERENCE.c.target_type == "Patient", REFERENCE.c.target_id == source_id))
        return sorted((r.resource_type, r.resource_id) for r in rows if r.resource_type not in RECORD_KEEPING
                      and (r.resource_type, r.resource_id) not in (("Patient", source_id), ("Patient", target_id)))

    @staticmethod
    def _move(repo: Repository, base: str, referrers: list[tuple[str, str]], source_id: str,
              target_id: str) -> list[tuple[Version, Version]]:
        forms = _forms(base, source_id)
        changed = []
        repo.prefetch_current(referrers)
        for rtype, rid in referrers:
            before = repo.current(rtype, rid, for_update=True)
            if before is None or before.deleted or before.content is None:
                continue
            content = copy.deepcopy(before.content)
            paths = reference_paths(content, forms)
            for path in paths:
                _at(content, path)["reference"] = f"Patient/{target_id}"
            if paths:
                after, _ = repo.update(rtype, rid, content)
                changed.append((before, after))
        return changed

    @staticmethod
    def _answer(req: FhirRequest, params: dict[str, tuple[int, dict[str, Any]]], result: dict[str, Any],
                provenance: Version | None, moved: int, *, preview: bool) -> FhirResponse:
        text = (f"Preview: {moved} resource(s) refer to the source patient and would move to the target"
                if preview else f"Merged: {moved} resource(s) now refer to the target patient")
        out: list[dict[str, Any]] = [
            {"name": "input", "resource": {"resourceType": "Parameters",
                                           "parameter": [p for _, p in sorted(params.values(), key=lambda x: x[0])]}},
            {"name": "outcome", "resource": operation_outcome([Issue("informational", text, severity="information")])},
            {"name": "result", "resource": result}]
        if provenance is not None:
            out.append({"name": "provenance", "valueReference": {"reference": provenance.reference}})
        return FhirResponse(200, {"resourceType": "Parameters", "parameter": out})


class Unmerge:
    """``POST [base]/Patient/$unmerge`` with ``provenance``: the merge's Provenance."""

    def __call__(self, req: FhirRequest, repo: Repository, resource_type: str | None,
                 resource_id: str | None) -> FhirResponse:
        _may_merge(repo)
        params = _params(req, "unmerge")
        if "provenance" not in params:
            raise FhirError(400, INVALID, "The 'provenance' parameter (a Reference to the merge's Provenance) is "
                                          "required", ("Parameters",))
        i, p = params["provenance"]
        ref = (p.get("valueReference") or {}).get("reference") if isinstance(p.get("valueReference"), dict) else None
        where = (f"Parameters.parameter[{i}].valueReference",)
        if not isinstance(ref, str) or not ref.startswith("Provenance/") or ref.count("/") != 1:
            raise FhirError(400, INVALID, "'provenance' must be a valueReference to Provenance/[id]", where)
        with repo.acting_as(as_system("Patient/$unmerge puts back the references a merge moved")):
            prov = repo.read("Provenance", ref.split("/", 1)[1])
            content = prov.content or {}
            codes = [c.get("code") for c in (content.get("activity") or {}).get("coding") or []
                     if c.get("system") == LIFECYCLE]
            if "merge" not in codes:
                raise rule_violation(422, "unmerge-not-a-merge", f"{ref} does not record a patient merge", where)
            befores = [self._vread(repo, e["what"]["reference"]) for e in content.get("entity") or []
                       if e.get("role") == "revision" and isinstance((e.get("what") or {}).get("reference"), str)]
            source, target = self._pair(repo, [b for b in befores if b.resource_type == "Patient"])
            if source is None or target is None:
                raise rule_violation(409, "unmerge-not-merged", f"The patients of {ref} are no longer merged", where)
            src_now = repo.read("Patient", source.id)
            changed = self._restore(repo, req.base_url, befores, source.id, target.id)
            restored = _unlink(src_now.content or {}, f"Patient/{target.id}", "replaced-by")
            if "active" in (source.content or {}):
                restored["active"] = (source.content or {})["active"]
            else:
                restored.pop("active", None)
            after_source, _ = repo.update("Patient", source.id, restored)
            tgt_now = repo.read("Patient", target.id)
            after_target, _ = repo.update("Patient", target.id,
                                          _unlink(tgt_now.content or {}, f"Patient/{source.id}", "replaces"))
            changed += [(src_now, after_source), (tgt_now, after_target)]
            provenance = _provenance(repo, "unmerge", changed,
                                     [{"role": "source", "what": {"reference": prov.reference}}])
        shown = repo.access.mask(after_source)  # the caller's view of the result
        return FhirResponse(200, {"resourceType": "Parameters", "parameter": [
            {"name": "outcome", "resource": operation_outcome([Issue(
                "informational", f"Unmerged: {len(changed) - 2} resource(s) refer to Patient/{source.id} again",
                severity="information")])},
            {"name": "result", "resource": shown.content},
            {"name": "provenance", "valueReference": {"reference": provenance.reference}}]})

    @staticmethod
    def _vread(repo: Repository, versioned: str) -> Version:
        rtype, rid, _, vid = versioned.split("/")
        return repo.vread(rtype, rid, int(vid))

    @staticmethod
    def _pair(repo: Repository, patients: list[Version]) -> tuple[Version | None, Version | None]:
        """(source, target) as they were before the merge: the source is now replaced by the target."""
        by_id = {p.id: p for p in patients}
        for p in patients:
            current = repo.current("Patient", p.id)
            for lk in (current.content or {}).get("link") or [] if current is not None else []:
                other = str((lk.get("other") or {}).get("reference") or "")
                if lk.get("type") == "replaced-by" and other.removeprefix("Patient/") in by_id:
                    return p, by_id[other.removeprefix("Patient/")]
        return None, None

    @staticmethod
    def _restore(repo: Repository, base: str, befores: list[Version], source_id: str,
                 target_id: str) -> list[tuple[Version, Version]]:
        """Where a resource referred to the source before the merge and refers to the target now, it refers to
        the source again; references added since the merge stay as they are."""
        changed = []
        for before in befores:
            if before.resource_type == "Patient" and before.id in (source_id, target_id):
                continue
            now = repo.current(before.resource_type, before.id, for_update=True)
            if now is None or now.deleted or now.content is None:
                continue
            content = copy.deepcopy(now.content)
            moved = [path for path in reference_paths(before.content, _forms(base, source_id))
                     if (_at(content, path) or {}).get("reference") in _forms(base, target_id)]
            for path in moved:
                _at(content, path)["reference"] = f"Patient/{source_id}"
            if moved:
                after, _ = repo.update(before.resource_type, before.id, content)
                changed.append((now, after))
        return changed
