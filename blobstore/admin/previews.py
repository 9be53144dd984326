"""Safe previews of untrusted blobs: escaped text, a hex dump, or a sniffed image type."""

from __future__ import annotations

import codecs
from dataclasses import dataclass

PREVIEW_BYTES = 8192
"""How many leading bytes of a blob a preview reads."""

HEX_DUMP_BYTES = 512
"""How many of those a hex dump shows."""

_IMAGE_SIGNATURES = [
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
]


def image_type(head: bytes) -> str | None:
    """Return the MIME type of a PNG, JPEG, GIF or WebP image that starts so, or None."""
    for signature, content_type in _IMAGE_SIGNATURES:
        if head.startswith(signature):
            return content_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def as_text(head: bytes, *, complete: bool) -> str | None:
    """Return head decoded as UTF-8 text, or None if it is not text.

    When head is only the start of a blob (not complete), a character cut
    off at its end is dropped rather than taken for an encoding error.
    """
    # A NUL byte is valid UTF-8 but marks binary data, as git and grep judge it.
    if b"\x00" in head:
        return None
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(head, final=complete)
    except UnicodeDecodeError:
        return None


def hex_dump(data: bytes) -> str:
    """Return data as ``hexdump -C`` shows it: offsets, 16 bytes a line in hex, and in ASCII."""
    lines = []
    for offset in range(0, len(data), 16):
        row = data[offset : offset + 16]
        printable = "".join(chr(byte) if 0x20 <= byte < 0x7F else "." for byte in row)
        lines.append(f"{offset:08x}  {row[:8].hex(' '):<23}  {row[8:].hex(' '):<23}  |{printable}|")
    return "\n".join(lines)


@dataclass(frozen=True)
class Preview:
    """What the first bytes of a blob show as: an image, text, or a hex dump."""

    size: int
    """The blob's size, in bytes."""
    shown: int
    """How many of its bytes the text or hex dump holds."""
    image_type: str | None = None
    text: str | None = None
    hex_dump: str | None = None

    @property
    def partial(self) -> bool:
        """Return whether the text or hex dump shows only the start of the blob."""
        return self.shown < self.size


def make_preview(head: bytes, size: int) -> Preview:
    """Return the preview of a blob of size bytes that starts with head."""
    content_type = image_type(head)
    if content_type is not None:
        return Preview(size, 0, image_type=content_type)
    text = as_text(head, complete=len(head) == size)
    if text is not None:
        return Preview(size, len(head), text=text)
    return Preview(size, min(len(head), HEX_DUMP_BYTES), hex_dump=hex_dump(head[:HEX_DUMP_BYTES]))
