"""Name-based UUIDs as text, the form every stage writes them in (event ids, row ids)."""

from __future__ import annotations

import hashlib
import uuid

__all__ = ["uuid5_text"]


def uuid5_text(namespace: uuid.UUID, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))``, without building the :class:`uuid.UUID`.

    The same SHA-1 name-based UUID (RFC 4122 version 5), formatted straight from the
    digest: a third of the time, and every canonical event and created row asks for one.
    """
    data = namespace.bytes + name.encode("utf-8")
    digest = bytearray(hashlib.sha1(data, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
