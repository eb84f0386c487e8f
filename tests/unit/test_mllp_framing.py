"""MLLP framing fed bytes without sockets: splits anywhere, several frames per chunk, noise, size limit."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from interfaces.mllp.framing import FrameTooLarge, MllpDecoder, encode

MSG1 = b"MSH|^~\\&|LAB|HOSP|||20240101||ORU^R01|1|P|2.5\rPID|1||123^^^HOSP^MR"
MSG2 = b"MSH|^~\\&|LAB|HOSP|||20240101||ADT^A01|2|P|2.5\rPID|1||456^^^HOSP^MR"


def feed_all(decoder: MllpDecoder, chunks: list[bytes]) -> list[object]:
    out: list[object] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


def test_one_frame() -> None:
    assert MllpDecoder().feed(encode(MSG1)) == [MSG1]


def test_several_frames_in_one_chunk_and_noise_between() -> None:
    stream = b"\r\n" + encode(MSG1) + b"garbage\r\n" + encode(MSG2) + b"\n"
    assert MllpDecoder().feed(stream) == [MSG1, MSG2]


def test_split_at_every_position() -> None:
    stream = encode(MSG1) + encode(MSG2)
    for cut in range(len(stream) + 1):
        decoder = MllpDecoder()
        assert feed_all(decoder, [stream[:cut], stream[cut:]]) == [MSG1, MSG2], cut
        assert not decoder.in_frame


def test_byte_by_byte() -> None:
    stream = encode(MSG1) + b"xx" + encode(MSG2)
    assert feed_all(MllpDecoder(), [bytes([b]) for b in stream]) == [MSG1, MSG2]


@given(st.lists(st.integers(min_value=0, max_value=300), max_size=8))
def test_random_splits(cuts: list[int]) -> None:
    stream = b"noise" + encode(MSG1) + encode(MSG2) + encode(MSG1)
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert feed_all(MllpDecoder(), chunks) == [MSG1, MSG2, MSG1]


def test_end_block_without_carriage_return() -> None:
    assert MllpDecoder().feed(b"\x0b" + MSG1 + b"\x1c" + b"\x0b" + MSG2 + b"\x1c\r") == [MSG1, MSG2]


def test_restart_inside_a_frame_drops_the_abandoned_part() -> None:
    assert MllpDecoder().feed(b"\x0bMSH|half" + encode(MSG2)) == [MSG2]


def test_oversize_frame_is_reported_once_and_the_next_frame_still_decodes() -> None:
    decoder = MllpDecoder(max_size=100)
    big = b"MSH|^~\\&|LAB|HOSP|||20240101||ORU^R01|9|P|2.5\r" + b"OBX|" + b"x" * 500
    frames = feed_all(decoder, [encode(big)[:60], encode(big)[60:300], encode(big)[300:] + encode(MSG1[:90])])
    assert len(frames) == 2
    assert isinstance(frames[0], FrameTooLarge)
    assert frames[0].size == len(big)
    assert frames[0].head.startswith(b"MSH|^~\\&|LAB")
    assert frames[1] == MSG1[:90]
    assert decoder.pending == 0


def test_memory_stays_bounded_while_discarding() -> None:
    decoder = MllpDecoder(max_size=1000)
    decoder.feed(b"\x0b")
    for _ in range(100):
        decoder.feed(b"y" * 10_000)
        assert decoder.pending <= 1000
    assert isinstance(decoder.feed(b"\x1c\r")[0], FrameTooLarge)


def test_encode() -> None:
    assert encode(b"A") == b"\x0bA\x1c\r"
