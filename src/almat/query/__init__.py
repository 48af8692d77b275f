"""Query labels: filters by chemistry, campaign, oracle, source, size and date; streaming results."""

from almat.query.api import (
    KNOWN_FILTERS, LabelQuery, MixedOraclesError, UnknownFilterError, query_labels, reuse_summary,
)
