"""MongoDB's 16 MB document limit, checked before writing (an embedded store would not complain).

Large objects (model weights, trajectories, big label sets) belong in the ``data`` store
(``almat.stores.put_blob``; GridFS on MongoDB) and are referenced by ``blob_uuid`` from the documents.
"""

from __future__ import annotations

from typing import Any

import bson
from monty.json import jsanitize

#: MongoDB's BSON document size limit (16 MiB)
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024


class DocumentTooLargeError(ValueError):
    """A document would exceed MongoDB's 16 MB limit."""


def document_size(doc: Any) -> int:
    """BSON size of a document (a dict, or a pydantic document with ``to_store()``) in bytes."""
    if hasattr(doc, "to_store"):
        doc = doc.to_store()
    try:
        return len(bson.encode(doc))
    except (bson.errors.InvalidDocument, TypeError):
        return len(bson.encode(jsanitize(doc, strict=False, allow_bson=True, enum_values=True)))


def assert_document_size(doc: Any, limit: int = MAX_DOCUMENT_BYTES, what: str | None = None) -> int:
    """Raise :class:`DocumentTooLargeError` when ``doc`` is ``limit`` bytes of BSON or more; returns the size."""
    size = document_size(doc)
    if size >= limit:
        raw = doc.to_store() if hasattr(doc, "to_store") else doc
        name = what or next((f"{k}={raw[k]!r}" for k in ("label_id", "model_id", "name", "blob_uuid", "campaign")
                             if isinstance(raw, dict) and k in raw), type(doc).__name__)
        biggest = ""
        if isinstance(raw, dict) and raw:
            sizes = {k: document_size({k: v}) for k, v in raw.items()}
            top = max(sizes, key=sizes.get)
            biggest = f"; largest field {top!r} ({sizes[top] / 2**20:.1f} MiB)"
        raise DocumentTooLargeError(
            f"document {name} is {size / 2**20:.1f} MiB of BSON, over MongoDB's {limit / 2**20:.0f} MiB limit"
            f"{biggest}: keep large objects in the data store (almat.stores.put_blob) and store their blob id"
        )
    return size
