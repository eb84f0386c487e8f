"""References against their element's targetProfile: the type of the target where the reference tells it
(``Patient/1``, a Bundle entry's fullUrl, a ``#contained`` id), and, when the target is at hand (an entry of
the Bundle being validated, by fullUrl or ``Type/id``, or a resource contained in the same resource), its
conformance to a target profile that is not a core definition.

A target conforms when it claims one of the allowed profiles in ``meta.profile`` (it is validated against
that claim where it stands, its errors reported there) or validates against one of them with no errors
(checked once per target and profile, the first error quoted). Targets outside the request (on the server,
elsewhere) are not fetched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fhir_server.errors import STRUCTURE
from fhir_server.validation.matching import core_type, reference_type
from fhir_server.validation.profile import ElementDef

if TYPE_CHECKING:
    from fhir_server.validation.walker import Item, Walker

_ANY = frozenset({"Resource", "DomainResource"})


def check(walker: Walker, edef: ElementDef, item: Item, resource: dict[str, Any]) -> None:
    ref = item.value.get("reference") if isinstance(item.value, dict) else None
    if not isinstance(ref, str):
        return
    allowed: set[str] = set()  # types
    core_allowed: set[str] = set()  # types allowed by a core definition: any instance of them will do
    profiles: list[tuple[str, str]] = []  # (profile url, its type) of the non-core target profiles
    for t in edef.types:
        if t.code != "Reference":
            continue
        if not t.target_profiles:
            return
        for url in t.target_profiles:
            bare = url.split("|", 1)[0]
            name = core_type(bare)
            if name is None:
                prof = walker.defs.profile(bare)
                if prof is None:
                    return  # a target we cannot resolve: nothing to say
                name = prof.type
                profiles.append((bare, name))
            else:
                core_allowed.add(name)
            if name in _ANY:
                return
            allowed.add(name)
    if ref.startswith("#"):  # this resource's (or its container's) contained one, not another entry's
        local = walker.target(ref, resource)
        actual = str(local.get("resourceType")) if local is not None else None
    else:
        actual = reference_type(ref, walker.local)
    if allowed and actual is not None and actual not in allowed:
        walker.issue(STRUCTURE, item.path + ".reference",
                      f"a reference to {actual} is not allowed here (allowed: {', '.join(sorted(allowed))})")
        return
    if not profiles:
        return
    target = walker.target(ref, resource)
    if target is None:
        return
    rtype = target.get("resourceType")
    candidates = [url for url, name in profiles if name == rtype]
    if not candidates or rtype in core_allowed:
        return
    meta = target.get("meta")
    listed = meta.get("profile") if isinstance(meta, dict) else None
    claimed = {p.split("|", 1)[0] for p in listed or [] if isinstance(p, str)}
    if claimed & set(candidates):
        return
    first = None
    for url in candidates:
        problem = walker.conforms(target, url)
        if problem is None:
            return
        first = first or problem
    walker.issue(STRUCTURE, item.path + ".reference",
                  f"the referenced {rtype} ({ref}) does not conform to {' or '.join(candidates)}: {first}")
