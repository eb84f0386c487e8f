"""MSH: who sent the message, what it is, and how it wants to be acknowledged."""

from __future__ import annotations

from dataclasses import dataclass

import hl7apy

from mappings.hl7v2.errors import UNSUPPORTED_VERSION_ID, ErrorDetail
from mappings.hl7v2.message import Segment, V2Message

# 2.3-2.8 as the issue asks; hl7apy's reference library decides which of these it knows (2.7.1 reads as 2.7).
SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2")
# Still sent by real senders (HAPI takes them): read with the 2.3 structures, which are backward compatible
# (later versions only add fields and segments), and accepted with a warning unless hl7_legacy_versions=false.
LEGACY_VERSIONS = ("2.1", "2.2")


@dataclass(frozen=True)
class Header:
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_type: str  # MSH-9.1, e.g. ORU
    trigger_event: str  # MSH-9.2, e.g. R01
    structure: str  # MSH-9.3, e.g. ORU_R01 ("" when the sender left it out)
    control_id: str  # MSH-10
    processing_id: str  # MSH-11
    version: str  # MSH-12.1
    accept_ack: str  # MSH-15: AL | NE | ER | SU ("" = original acknowledgement mode)
    application_ack: str  # MSH-16
    charset: str  # MSH-18
    datetime: str  # MSH-7

    @property
    def sender(self) -> str:
        """The de-duplication namespace for control ids (MSH-3 and MSH-4)."""
        return f"{self.sending_application}|{self.sending_facility}"

    @property
    def event(self) -> str:
        return f"{self.message_type}^{self.trigger_event}"

    @property
    def enhanced(self) -> bool:
        return bool(self.accept_ack or self.application_ack)

    def version_supported(self, legacy: bool = True) -> bool:
        if legacy and self.version in LEGACY_VERSIONS:
            return True
        if self.version not in SUPPORTED_VERSIONS:
            return False
        return self.library_version in hl7apy.SUPPORTED_LIBRARIES

    @property
    def library_version(self) -> str:
        if self.version in LEGACY_VERSIONS:
            return "2.3"
        return "2.7" if self.version == "2.7.1" else self.version


def version_warnings(header: Header) -> list[ErrorDetail]:
    """A legacy version is read as 2.3: said in the ACK (severity W), so its sender's team can know."""
    if header.version not in LEGACY_VERSIONS:
        return []
    return [ErrorDetail(UNSUPPORTED_VERSION_ID, f"Version {header.version} read with the 2.3 message "
                        "structures (backward compatible); please upgrade the interface", "MSH", 1, 12,
                        severity="W")]


def _hd(seg: Segment, seq: int) -> str:
    # HD: namespace id, else universal id (OLIS sends ^OLIS^X500).
    return seg.get(seq, comp=1) or seg.get(seq, comp=2)


def read_header(msg: V2Message) -> Header:
    """MSH's values, U+0000 removed: they key the message store and are echoed in the ACK, neither of which
    can hold it (the mapping then refuses the message naming the field, see checks.py)."""
    msh = msg.msh
    header = Header(
        sending_application=_hd(msh, 3), sending_facility=_hd(msh, 4),
        receiving_application=_hd(msh, 5), receiving_facility=_hd(msh, 6),
        message_type=msh.get(9, comp=1).upper(), trigger_event=msh.get(9, comp=2).upper(),
        structure=msh.get(9, comp=3).upper(), control_id=msh.get(10), processing_id=msh.get(11),
        version=msh.get(12, comp=1), accept_ack=msh.get(15).upper(), application_ack=msh.get(16).upper(),
        charset=msh.get(18), datetime=msh.get(7),
    )
    if any("\x00" in v for v in header.__dict__.values()):  # raw or as the hex escape \X00\
        header = Header(**{k: v.replace("\x00", "") for k, v in header.__dict__.items()})
    return header


def known_structures(version: str) -> frozenset[str]:
    """Message structures the standard defines for a version (hl7apy's reference library)."""
    lib = hl7apy.load_library("2.7" if version == "2.7.1" else version)
    return frozenset(lib.MESSAGES)
