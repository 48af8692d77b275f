"""Stored documents and structure identity."""

from almat.schemas.documents import (
    AlmatDocument,
    CalibrationDoc,
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
from almat.schemas.records import NftChunkRecord, NftIterationDoc, PoolIterationDoc, StopKind
from almat.schemas.structure import chemsys_of, structure_hash, to_atoms, to_structure
