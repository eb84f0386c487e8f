"""ER7 tokenising, escapes, MSH-18 character sets, and ACK/ERR formatting."""

from __future__ import annotations

import pytest

from interfaces.mllp.ack import build_ack
from mappings.hl7v2.errors import REQUIRED_FIELD_MISSING, ErrorDetail
from mappings.hl7v2.header import read_header
from mappings.hl7v2.message import (
    Encoding,
    MessageError,
    charset_error,
    decode,
    escape,
    parse,
    parse_msh,
    unescape,
)

ENC = Encoding()


def test_unescape_delimiters_hex_and_formatting() -> None:
    assert unescape(r"a\F\b\S\c\T\d\R\e\E\f", ENC) == "a|b^c&d~e\\f"
    assert unescape("caf\\XC3A9\\", ENC) == "café"
    assert unescape(r"one\.br\two\.sp\three", ENC) == "one\ntwo\nthree"
    assert unescape(r"\H\bold\N\ text", ENC) == "bold text"
    assert unescape(r"dangling \ escape", ENC) == r"dangling \ escape"
    assert unescape(escape("x|y^z&w~v\\u\nnext", ENC), ENC) == "x|y^z&w~v\\u\nnext"


def test_positions_follow_the_standard() -> None:
    msg = parse("MSH|^~\\&|APP|FAC|||20240101||ADT^A01|C1|P|2.5\nPID|1||A^^^H&1.2.3&ISO^MR~B^^^H^PI||Doe^Jo")
    msh, pid = msg.msh, msg.segments[1]
    assert msh.get(1) == "|" and msh.get(2) == "^~\\&" and msh.get(10) == "C1"
    assert pid.get(3, rep=1) == "B" and pid.get(3, rep=0, comp=4, sub=2) == "1.2.3" and pid.get(5, comp=2) == "Jo"
    assert pid.get(3, rep=5) == "" and pid.get(40) == ""
    assert read_header(msg).sender == "APP|FAC" and read_header(msg).event == "ADT^A01"


def test_charsets_from_msh18() -> None:
    latin = "MSH|^~\\&|A|B|||20240101||ADT^A01|1|P|2.5||||||8859/1\rPID|1||1||Müller".encode("latin-1")
    assert "Müller" in decode(latin)
    utf8 = "MSH|^~\\&|A|B|||20240101||ADT^A01|1|P|2.5||||||UNICODE UTF-8\rPID|1||1||Müller".encode()
    assert "Müller" in decode(utf8)
    lying = "MSH|^~\\&|A|B|||20240101||ADT^A01|1|P|2.5||||||ASCII\rPID|1||1||Müller".encode("latin-1")
    assert "Müller" in decode(lying)  # the text keeps every byte (stored as received, Latin-1)...
    assert charset_error(lying) == "byte 63 (0xFC) is not valid ASCII, the character set MSH-18 declares"
    assert charset_error(latin) is None and charset_error(utf8) is None  # ...but the lie is an error
    undeclared = "MSH|^~\\&|A|B|||20240101||ADT^A01|1|P|2.5\rPID|1||1||Müller".encode("latin-1")
    assert charset_error(undeclared) is None and "Müller" in decode(undeclared)  # nothing declared: lenient


def test_msh_alone_when_the_rest_does_not_parse() -> None:
    text = "MSH|^~\\&|LAB|CITY|EHR|HOSP|20240101||ORU^R01|C9|P|2.5\rPID|1\rpid|1"
    with pytest.raises(MessageError):
        parse(text)
    msh = parse_msh(text)
    assert msh is not None and read_header(msh).control_id == "C9"
    assert parse_msh("hello") is None and parse_msh("MSH|") is None
    # MSH-2 unusable: the other fields are still read with the standard delimiters, to answer the sender
    broken = parse_msh("MSH|^&&^|A|B|||20240101||ADT^A01|C10|P|2.6\rPID|1")
    assert broken is not None and read_header(broken).control_id == "C10"
    with pytest.raises(MessageError) as refused:
        parse("MSH|^&&^|A|B|||20240101||ADT^A01|C10|P|2.6\rPID|1")
    assert refused.value.field == 2


def test_msh_2_variants_read_where_no_meaning_is_lost() -> None:
    doubled = parse("MSH|^~\\\\&|A|B|||20240101||ADT^A01|C1|P|2.6\rPID|1||X^^^H&1.2&ISO")
    assert doubled.enc.msh2 == "^~\\&" and doubled.segments[1].get(3, comp=4, sub=2) == "1.2"
    three = parse("MSH|^~}|A|B|||20240101||BAR^P01|C2|P|2.4\rPID|1||X}F}Y")
    assert three.enc.escape == "}" and three.segments[1].get(3) == "X|Y"
    with pytest.raises(MessageError):  # an "&" in the message: whether it separates cannot be known
        parse("MSH|^~}|A|B|||20240101||BAR^P01|C2|P|2.4\rPID|1||X&Y")


def test_nul_is_never_a_delimiter_and_never_keyed() -> None:
    with pytest.raises(MessageError):
        parse("MSH|^~\\\x00|A|B")
    header = read_header(parse("MSH|^~\\&|A\x00|B|||20240101||ADT^A01|C\\X00\\1|P|2.5"))
    assert header.sender == "A|B" and header.control_id == "C1"


@pytest.mark.parametrize("text", ["", "PID|1", "MSH", "MSH|^^~\\&|A", "MSH|^~\\&|A\rPID|1\rMSH|^~\\&|B",
                                  "MSH|^~\\&|A\rpid|1"])
def test_unparseable(text: str) -> None:
    with pytest.raises(MessageError):
        parse(text)


def test_ack_with_err_for_25_and_23() -> None:
    msg = parse("MSH|^~\\&|LAB|CITY|EHR|HOSP|20240101||ORU^R01|C9|P|2.5.1")
    detail = ErrorDetail(REQUIRED_FIELD_MISSING, "PID-3 is required", "PID", 1, 3, 1)
    ack = build_ack(read_header(msg), "AE", [detail]).split("\r")
    assert ack[0].startswith("MSH|^~\\&|EHR|HOSP|LAB|CITY|") and "|ACK^R01^ACK|" in ack[0]
    assert ack[1] == "MSA|AE|C9|PID-3 is required"
    assert ack[2] == "ERR||PID^1^3^1^1|101^Required field missing^HL70357|E||||PID-3 is required"
    old = parse("MSH|^~\\&|LAB|CITY|EHR|HOSP|20240101||ORU^R01|C9|P|2.3")
    assert build_ack(read_header(old), "AE", [detail]).split("\r")[2] == \
        "ERR|PID^1^3^101&Required field missing&HL70357"
