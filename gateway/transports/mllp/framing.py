"""MLLP framing: `<VT> message <FS><CR>`, decoded incrementally from whatever TCP delivers.

Pure: bytes in, frames out, no sockets, so every way a sender can split, merge or mangle frames is a
unit-sized test. Memory is bounded: a message longer than `max_bytes` is not buffered but skipped up
to its end block, and reported as an `Oversized` marker carrying only its first few KB (enough to
address a NAK from its MSH).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

START_BLOCK = b"\x0b"  # VT
END_BLOCK = b"\x1c\r"  # FS CR
_FS = 0x1C
_CR = 0x0D

HEAD_BYTES = 4096  # kept of an oversized message: an MSH is rarely over 1 KB


@dataclass(frozen=True, slots=True)
class Oversized:
    """A message longer than the limit, discarded: its first `HEAD_BYTES` and its full size."""

    head: bytes
    size: int


Frame: TypeAlias = bytes | Oversized


def encode(message: bytes) -> bytes:
    """`message` wrapped in an MLLP frame."""
    return START_BLOCK + message + END_BLOCK


class FrameDecoder:
    """Turns a byte stream into complete frames; `feed` as data arrives, in order.

    `junk_bytes` counts bytes seen outside any frame (before a start block, or a frame abandoned by
    a new start block); `pending_bytes` is the size of the frame in progress, if any.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.junk_bytes = 0
        self.frames_begun = 0  # start blocks seen: a new value means a new frame is in progress
        self._inside = False
        self._chunks: list[bytes] = []  # of the frame in progress: joined once at its end, never regrown
        self._size = 0  # bytes of the current frame, including those discarded when oversized
        self._head: bytes | None = None  # set once the current frame is over the limit
        # A chunk ending in FS may be the first half of the end block; hold it until the next byte
        # shows whether it is, so a message of exactly max_bytes is not counted one byte too long.
        self._held_fs = False

    @property
    def in_frame(self) -> bool:
        """Whether a frame has begun and not ended."""
        return self._inside

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame: what is lost if the connection closes now."""
        return self._size + self._held_fs if self._inside else 0

    def feed(self, data: bytes) -> list[Frame]:
        """The frames completed by `data` (possibly none, possibly several)."""
        frames: list[Frame] = []
        pos = 0
        while pos < len(data):
            pos = self._inside_frame(data, pos, frames) if self._inside else self._outside_frame(data, pos)
        return frames

    def _outside_frame(self, data: bytes, pos: int) -> int:
        start = data.find(START_BLOCK, pos)
        if start == -1:
            self.junk_bytes += len(data) - pos
            return len(data)
        self.junk_bytes += start - pos
        self._begin()
        return start + 1

    def _inside_frame(self, data: bytes, pos: int, frames: list[Frame]) -> int:
        if self._held_fs:
            self._held_fs = False
            if data[pos] == _CR:
                frames.append(self._finish())
                return pos + 1
            self._append(bytes([_FS]))  # an FS inside the message after all
        # One memchr-speed scan for FS (rare inside messages) instead of a two-byte search, and the
        # start-block check only up to it: a multi-MB frame arriving in 64 KB reads stays cheap.
        end, fs = -1, data.find(_FS, pos)
        if fs != -1 and fs + 1 < len(data):
            # FS not followed by CR is content: the rest is searched for the whole end block
            end = fs if data[fs + 1] == _CR else data.find(END_BLOCK, fs + 1)
        restart = data.find(START_BLOCK, pos, len(data) if end == -1 else end)
        if restart != -1:
            # A new start block before the end block: the sender gave up on this frame and began
            # again. Count the abandoned part as junk and keep the new frame.
            self.junk_bytes += 1 + self._size + (restart - pos)  # 1: the abandoned start block
            self._begin()
            return restart + 1
        if end != -1:
            self._append(data[pos:end])
            frames.append(self._finish())
            return end + len(END_BLOCK)
        chunk = data[pos:]
        if chunk[-1] == _FS:
            self._held_fs = True
            chunk = chunk[:-1]
        self._append(chunk)
        return len(data)

    def _begin(self) -> None:
        self._inside = True
        self.frames_begun += 1
        self._chunks = []
        self._size = 0
        self._head = None
        self._held_fs = False

    def _append(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._head is not None:
            return  # already over the limit: only counting until the end block
        if self._size > self.max_bytes:
            head = b""
            for piece in [*self._chunks, chunk]:
                head += piece[: HEAD_BYTES - len(head)]
            self._head = head
            self._chunks = []  # release the memory now, not at the end of the frame
            return
        if chunk:
            self._chunks.append(chunk)

    def _finish(self) -> Frame:
        frame: Frame = b"".join(self._chunks) if self._head is None else Oversized(self._head, self._size)
        self._inside = False
        self._chunks = []
        self._size = 0
        self._head = None
        return frame
