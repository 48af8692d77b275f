"""Stored documents and structure identity."""

from almat.schemas.documents import (
    AlmatDocument,
    CampaignDoc,
    CampaignStatus,
    DeviationHistogram,
    IterationDoc,
    LabelDoc,
    LabelStatus,
    ModelDoc,
    StructureDoc,
    StructureSource,
    TestErrors,
    utcnow,
)
from almat.schemas.structure import chemsys_of, structure_hash, to_atoms, to_structure

__all__ = [
    "AlmatDocument",
    "CampaignDoc",
    "CampaignStatus",
    "DeviationHistogram",
    "IterationDoc",
    "LabelDoc",
    "LabelStatus",
    "ModelDoc",
    "StructureDoc",
    "StructureSource",
    "TestErrors",
    "chemsys_of",
    "structure_hash",
    "to_atoms",
    "to_structure",
    "utcnow",
]
