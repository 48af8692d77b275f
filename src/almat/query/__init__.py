"""Query labels: filters by chemistry, campaign, oracle, source, size and date; streaming results."""

from almat.query.api import (
    KNOWN_FILTERS,
    LabelQuery,
    MixedOraclesError,
    UnknownFilterError,
    find_reusable_label,
    invalidate_labels,
    label_index,
    query_labels,
    reuse_summary,
)
from almat.query.limits import MAX_DOCUMENT_BYTES, DocumentTooLargeError, assert_document_size, document_size

__all__ = [
    "KNOWN_FILTERS",
    "MAX_DOCUMENT_BYTES",
    "DocumentTooLargeError",
    "LabelQuery",
    "MixedOraclesError",
    "UnknownFilterError",
    "assert_document_size",
    "document_size",
    "find_reusable_label",
    "invalidate_labels",
    "label_index",
    "query_labels",
    "reuse_summary",
]
