"""Nearsighted force training (NFT): learn a large target structure from small chunks cut around its
most uncertain atoms, trained on the forces of the chunks' central atoms only. See ``docs/nft.md``."""

from almat.nft.chunks import (
    Chunk,
    ChunkGroups,
    atomic_uncertainty,
    check_target_size,
    cut_chunk,
    cut_chunks,
    group_centres,
    select_uncertain_atoms,
)
from almat.nft.config import (
    NftCampaignConfig,
    NftChunkSettings,
    NftConvergenceSettings,
    NftTargetSettings,
    load_nft_config,
)
from almat.nft.documents import NftChunkRecord, NftIterationDoc
from almat.nft.flow import NftCampaignMaker, nft_iteration_flow
from almat.nft.runner import NftCampaignResult, nft_iterations, run_nft_campaign

__all__ = [
    "Chunk",
    "ChunkGroups",
    "NftCampaignConfig",
    "NftCampaignMaker",
    "NftCampaignResult",
    "NftChunkRecord",
    "NftChunkSettings",
    "NftConvergenceSettings",
    "NftIterationDoc",
    "NftTargetSettings",
    "atomic_uncertainty",
    "check_target_size",
    "cut_chunk",
    "cut_chunks",
    "group_centres",
    "load_nft_config",
    "nft_iteration_flow",
    "nft_iterations",
    "run_nft_campaign",
    "select_uncertain_atoms",
]
