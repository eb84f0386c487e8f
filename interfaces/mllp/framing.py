"""MLLP framing (HL7 v2 Appendix C, release 1): ``0x0B message 0x1C 0x0D``, kept apart from decoding.

A pure incremental decoder: feed it whatever bytes the socket delivered (split anywhere, several frames in
one chunk) and it returns the complete frames. Bytes outside a frame (line noise, keep-alive newlines) are
dropped, as python-hl7's stream reader does. A frame growing past ``max_size`` is discarded up to its end
and reported once as ``FrameTooLarge`` so the listener can NAK it without buffering the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
END_FRAME = END_BLOCK + CARRIAGE_RETURN


@dataclass(frozen=True)
class FrameTooLarge:
    """A frame longer than the limit; ``head`` holds its first bytes (enough to read MSH for a NAK)."""

    head: bytes
    size: int


Frame = bytes | FrameTooLarge


def encode(message: bytes) -> bytes:
    """One MLLP frame around an HL7 message (segments separated by CR)."""
    return START_BLOCK + message + END_FRAME


class MllpDecoder:
    """Incremental MLLP decoder; ``feed(chunk)`` returns the frames completed by that chunk."""

    HEAD_BYTES = 4096

    def __init__(self, max_size: int = 1024 * 1024) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._in_frame = False
        self._oversize: int | None = None  # bytes seen of a frame being discarded
        self._head = b""

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame held in memory."""
        return len(self._buf)

    @property
    def in_frame(self) -> bool:
        return self._in_frame

    def feed(self, chunk: bytes) -> list[Frame]:
        frames: list[Frame] = []
        data = memoryview(chunk)
        pos = 0
        while pos < len(chunk):
            if not self._in_frame:
                start = chunk.find(START_BLOCK, pos)
                if start < 0:
                    break  # noise between frames (including the CR after a 0x1C split from it)
                self._begin()
                pos = start + 1
                continue
            end = chunk.find(END_BLOCK, pos)
            restart = chunk.find(START_BLOCK, pos, None if end < 0 else end)
            if restart >= 0:
                # A new start block inside a frame: the sender gave up on the previous message.
                self._begin()
                pos = restart + 1
                continue
            self._append(data[pos:] if end < 0 else data[pos:end])
            if end < 0:
                break
            pos = end + 1
            if chunk[pos:pos + 1] == CARRIAGE_RETURN:
                pos += 1
            frames.append(self._finish())
        return frames

    def _begin(self) -> None:
        self._in_frame = True
        self._buf = bytearray()
        self._oversize = None
        self._head = b""

    def _append(self, piece: memoryview) -> None:
        if self._oversize is not None:
            self._oversize += len(piece)
            return
        if len(self._buf) + len(piece) > self.max_size:
            self._head = bytes(self._buf[: self.HEAD_BYTES]) + bytes(piece[: max(0, self.HEAD_BYTES - len(self._buf))])
            self._oversize = len(self._buf) + len(piece)
            self._buf = bytearray()
            return
        self._buf += piece

    def _finish(self) -> Frame:
        self._in_frame = False
        if self._oversize is not None:
            frame: Frame = FrameTooLarge(self._head, self._oversize)
            self._oversize = None
            self._head = b""
            return frame
        out = bytes(self._buf)
        self._buf = bytearray()
        return out
