"""Nearsighted force training: per-atom uncertainty of a large target, and chunks cut around its most
uncertain atoms.

Details: ``docs/architecture.md``, module notes (almat/sampler/chunks.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
from ase import Atoms

__all__ = [
    "Chunk",
    "ChunkGroups",
    "atomic_uncertainty",
    "check_target_size",
    "cut_chunk",
    "cut_chunks",
    "group_centres",
    "perpendicular_widths",
    "select_uncertain_atoms",
]

ChunkMode = Literal["cluster", "periodic"]


@dataclass
class Chunk:
    """A chunk cut from the target: periodic ``atoms`` (a vacuum box for clusters)."""

    atoms: Atoms
    central_target: list[int]  # indices in the target of the central atoms
    central_chunk: list[int]  # their indices in ``atoms``
    target_indices: list[int]  # for each atom of the chunk, the target atom it is (an image of)
    mode: str
    cutoff: float

    @property
    def force_weights(self) -> np.ndarray:
        """1 on the central atoms, 0 on the others."""
        w = np.zeros(len(self.atoms))
        w[self.central_chunk] = 1.0
        return w


@dataclass
class ChunkGroups:
    """Central atoms grouped into chunks (each list starts with its chunk's reference atom)."""

    groups: list[list[int]]
    skipped: list[int] = field(default_factory=list)  # uncertain atoms not covered (max_chunks reached)

    @property
    def central_atoms(self) -> list[int]:
        return [i for g in self.groups for i in g]


def perpendicular_widths(cell) -> np.ndarray:
    """Distances between opposite faces of a cell (Å): the diameter of the largest sphere it holds."""
    cell = np.asarray(cell, dtype=float)
    volume = abs(float(np.linalg.det(cell)))
    areas = [np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)]
    return np.array([volume / a if a > 0 else 0.0 for a in areas])


def check_target_size(target: Atoms, cutoff: float) -> None:
    """A periodic target must hold a sphere of radius ``cutoff``: its shortest perpendicular width
    must be at least 2 x ``cutoff``, or a chunk would contain an atom and its own image."""
    if cutoff <= 0 or not math.isfinite(cutoff):
        raise ValueError(f"the chunk cutoff must be > 0 Å, got {cutoff}")
    if len(target) == 0:
        raise ValueError("the NFT target has no atoms")
    if not np.all(target.pbc):
        raise ValueError("the NFT target must be periodic along a, b and c")
    width = float(perpendicular_widths(target.cell).min())
    if width < 2 * cutoff:
        raise ValueError(
            f"the NFT target ({len(target)} atoms) is smaller than the cutoff sphere: its shortest "
            f"perpendicular cell width is {width:.2f} Å, less than 2 x cutoff = {2 * cutoff:.2f} Å; "
            "use a larger supercell as target or a smaller cutoff"
        )


def atomic_uncertainty(committee, target: Atoms, coefficient: float = 1.0) -> np.ndarray:
    """Per-atom uncertainty of ``target`` (eV/Å): ``coefficient`` x the norm of the standard deviation
    of the committee's force predictions (``CommitteePrediction.atomic_deviation``)."""
    if not coefficient > 0:
        raise ValueError(f"the uncertainty coefficient must be > 0, got {coefficient}")
    prediction = committee.predict([target])
    return coefficient * np.asarray(prediction.atomic_deviation(0), dtype=float)


def select_uncertain_atoms(uncertainty: Sequence[float], percentile: float) -> tuple[float, list[int]]:
    """The threshold (the ``percentile``-th percentile of ``uncertainty``) and the atoms at or above
    it, most uncertain first (ties by index)."""
    u = np.asarray(uncertainty, dtype=float)
    if u.ndim != 1 or u.size == 0:
        raise ValueError("need a non-empty list of per-atom uncertainties")
    if not np.all(np.isfinite(u)):
        raise ValueError("the per-atom uncertainties are not all finite")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {percentile}")
    threshold = float(np.percentile(u, percentile))
    above = np.flatnonzero(u >= threshold)
    order = sorted(above.tolist(), key=lambda i: (-u[i], i))
    return threshold, order


def _images(target: Atoms, point: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every image of every target atom within ``radius`` of ``point``: (atom index, integer shift,
    position)."""
    cell = np.asarray(target.cell, dtype=float)
    widths = perpendicular_widths(cell)
    reach = [int(math.ceil(radius / w)) + 1 for w in widths]
    # positions folded into the cell around the point keep the shift ranges small
    frac = np.linalg.solve(cell.T, (target.positions - point).T).T
    base = -np.floor(frac + 0.5)  # integer shift that brings each atom closest (in fractions) to point
    grid = np.array(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")).reshape(3, -1).T
    shifts = base[None, :, :] + grid[:, None, :]  # [n_shift, n_atoms, 3]
    positions = target.positions[None, :, :] + shifts @ cell
    dist = np.linalg.norm(positions - point, axis=-1)
    keep = dist <= radius + 1e-9
    shift_idx, atom_idx = np.nonzero(keep)
    return atom_idx, shifts[shift_idx, atom_idx].astype(int), positions[shift_idx, atom_idx]


def _centre_positions(target: Atoms, centres: Sequence[int]) -> np.ndarray:
    """Positions of the central atoms, each the image closest to the first one."""
    ref = target.positions[centres[0]]
    out = [ref]
    for c in centres[1:]:
        d = target.get_distance(centres[0], c, mic=True, vector=True)
        out.append(ref + d)
    return np.array(out)


def _fits(offsets: np.ndarray, cutoff: float, cell_lengths: np.ndarray) -> bool:
    """Do the cutoff spheres of central atoms at these offsets from the cell centre fit in the cell?"""
    return bool(np.all(np.abs(offsets) + cutoff < 0.5 * cell_lengths + 1e-9))


def group_centres(
    target: Atoms,
    candidates: Sequence[int],
    max_chunks: int,
    merge_distance: float,
    mode: ChunkMode = "cluster",
    cutoff: float | None = None,
    cell: Sequence[float] | None = None,
) -> ChunkGroups:
    """Group uncertain atoms (most uncertain first) into at most ``max_chunks`` chunks.

    An atom within ``merge_distance`` (minimum image) of a chunk's first central atom joins that chunk,
    in ``periodic`` mode only if its cutoff sphere still fits in the ``cell`` centred on the first
    central atom; otherwise it starts a new chunk while fewer than ``max_chunks`` exist, and is skipped
    after that.
    """
    if max_chunks < 1:
        raise ValueError(f"max_chunks must be >= 1, got {max_chunks}")
    if merge_distance < 0:
        raise ValueError(f"merge_distance must be >= 0 Å, got {merge_distance}")
    if mode == "periodic" and (cutoff is None or cell is None):
        raise ValueError("periodic chunks need the cutoff and the cell to group central atoms")
    lengths = None if cell is None else np.asarray(cell, dtype=float)
    groups: list[list[int]] = []
    skipped: list[int] = []
    for atom in candidates:
        atom = int(atom)
        placed = False
        for group in groups:
            vector = target.get_distance(group[0], atom, mic=True, vector=True)
            if np.linalg.norm(vector) > merge_distance:
                continue
            if mode == "periodic" and not _fits(np.asarray(vector)[None, :], cutoff, lengths):
                continue
            group.append(atom)
            placed = True
            break
        if placed:
            continue
        if len(groups) < max_chunks:
            groups.append([atom])
        else:
            skipped.append(atom)
    return ChunkGroups(groups, skipped)


def _shortest_distance(positions: np.ndarray) -> float:
    if len(positions) < 2:
        return math.inf
    d = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
    d[np.diag_indices_from(d)] = np.inf
    return float(d.min())


def cut_chunk(
    target: Atoms,
    centres: Sequence[int],
    cutoff: float,
    mode: ChunkMode = "cluster",
    vacuum: float = 6.0,
    cell: Sequence[float] | None = None,
    min_distance_factor: float = 0.7,
) -> Chunk:
    """Cut one chunk around the central atoms ``centres`` (indices in ``target``; the first is the
    reference: the other central atoms are taken at their image closest to it).

    ``cluster``: all atoms within ``cutoff`` of a central atom, in a box with ``vacuum`` Å between the
    cluster and its images. ``periodic``: all atoms within the orthorhombic ``cell`` (3 edge lengths,
    default ``2 cutoff + 1`` Å) centred on the reference atom; every central atom's cutoff sphere must
    fit in it. See the module doc for the trade-offs.
    """
    if not centres:
        raise ValueError("a chunk needs at least one central atom")
    if mode not in ("cluster", "periodic"):
        raise ValueError(f"unknown chunk mode {mode!r}; valid: cluster, periodic")
    check_target_size(target, cutoff)
    centres = [int(c) for c in centres]
    if len(set(centres)) != len(centres) or min(centres) < 0 or max(centres) >= len(target):
        raise ValueError(f"central atoms must be distinct indices of the target's {len(target)} atoms: {centres}")
    centre_pos = _centre_positions(target, centres)
    if mode == "cluster":
        idx, pos, new_pos, lengths = _cluster_atoms(target, centre_pos, cutoff, vacuum)
    else:
        idx, pos, new_pos, lengths = _periodic_atoms(target, centre_pos, cutoff, cell)

    order = _central_first(idx, pos, centres, centre_pos)
    idx, pos, new_pos = idx[order], pos[order], new_pos[order]
    if mode == "periodic":
        keep = _drop_seam_clashes(new_pos, pos, lengths, centre_pos, cutoff, min_distance_factor,
                                  n_central=len(centres))
        idx, pos, new_pos = idx[keep], pos[keep], new_pos[keep]

    atoms = Atoms(numbers=target.numbers[idx], positions=new_pos, cell=np.diag(lengths), pbc=True)
    return Chunk(
        atoms=atoms,
        central_target=centres,
        central_chunk=list(range(len(centres))),
        target_indices=[int(i) for i in idx],
        mode=mode,
        cutoff=float(cutoff),
    )


def _cluster_atoms(target: Atoms, centre_pos: np.ndarray, cutoff: float, vacuum: float):
    """``(target indices, true positions, chunk positions, box lengths)`` of a cluster chunk: the atoms within
    ``cutoff`` of a central atom, ``vacuum`` Å from the box's images."""
    if vacuum <= 0:
        raise ValueError(f"the cluster vacuum must be > 0 Å, got {vacuum}")
    ref = centre_pos[0]
    reach = float(np.linalg.norm(centre_pos - ref, axis=1).max()) + cutoff
    idx, _, pos = _images(target, ref, reach)
    near = np.min(np.linalg.norm(pos[:, None, :] - centre_pos[None, :, :], axis=-1), axis=1) <= cutoff + 1e-9
    idx, pos = idx[near], pos[near]
    lo, hi = pos.min(axis=0), pos.max(axis=0)
    return idx, pos, pos - lo + 0.5 * vacuum, hi - lo + vacuum


def _periodic_atoms(target: Atoms, centre_pos: np.ndarray, cutoff: float, cell: Sequence[float] | None):
    """``(target indices, true positions, chunk positions, cell lengths)`` of a periodic chunk: the atoms in the
    orthorhombic ``cell`` centred on the reference atom, which must hold every central atom's cutoff sphere."""
    ref = centre_pos[0]
    lengths = np.asarray(cell if cell is not None else [2 * cutoff + 1.0] * 3, dtype=float)
    if lengths.shape != (3,) or np.any(lengths <= 2 * cutoff):
        raise ValueError(
            f"the periodic chunk cell {lengths.tolist()} Å must have 3 edges, each > 2 x cutoff = "
            f"{2 * cutoff:.2f} Å, or chunk images would fall within the cutoff of the central atom"
        )
    width = float(perpendicular_widths(target.cell).min())
    if np.any(lengths > width):
        raise ValueError(
            f"the periodic chunk cell {lengths.tolist()} Å is not smaller than the target (shortest "
            f"perpendicular width {width:.2f} Å); use cluster chunks or a larger target"
        )
    if not _fits(centre_pos - ref, cutoff, lengths):
        raise ValueError("the cutoff spheres of these central atoms do not fit in one periodic chunk cell")
    idx, _, pos = _images(target, ref, 0.5 * float(np.linalg.norm(lengths)))
    rel = pos - ref
    inside = np.all((rel >= -0.5 * lengths) & (rel < 0.5 * lengths), axis=1)
    idx, pos = idx[inside], pos[inside]
    return idx, pos, pos - ref + 0.5 * lengths, lengths


def _central_first(idx: np.ndarray, pos: np.ndarray, centres: list[int], centre_pos: np.ndarray) -> list[int]:
    """The chunk's order: central atoms first (in the given order), then the others by distance to the reference."""
    central_rows = []
    for c, p in zip(centres, centre_pos):
        rows = np.flatnonzero((idx == c) & (np.linalg.norm(pos - p, axis=1) < 1e-6))
        if rows.size == 0:
            raise RuntimeError(f"central atom {c} is missing from its own chunk")  # cannot happen
        central_rows.append(int(rows[0]))
    dist_ref = np.linalg.norm(pos - centre_pos[0], axis=1)
    others = [k for k in np.argsort(dist_ref, kind="stable").tolist() if k not in set(central_rows)]
    return central_rows + others


def _drop_seam_clashes(new_pos, true_pos, lengths, centre_pos, cutoff, factor, n_central) -> np.ndarray:
    """Indices of the atoms to keep in a periodic chunk: of two atoms that come closer than
    ``factor`` x the shortest true distance across the cell faces, the one farther from the central
    atoms goes (central atoms and their cutoff spheres are never touched)."""
    n = len(new_pos)
    keep = np.ones(n, dtype=bool)
    d_true = _shortest_distance(true_pos)
    if not math.isfinite(d_true):
        return np.arange(n)
    delta = new_pos[:, None, :] - new_pos[None, :, :]
    delta -= lengths * np.round(delta / lengths)
    dist = np.linalg.norm(delta, axis=-1)
    dist[np.diag_indices(n)] = np.inf
    to_centre = np.min(np.linalg.norm(true_pos[:, None, :] - centre_pos[None, :, :], axis=-1), axis=1)
    protected = to_centre <= cutoff + 1e-9
    protected[:n_central] = True
    for i, j in sorted(zip(*np.nonzero(np.triu(dist < factor * d_true))), key=lambda p: dist[p]):
        if not (keep[i] and keep[j]):
            continue
        victim = i if to_centre[i] > to_centre[j] else j
        if protected[victim]:
            victim = j if victim == i else i
        if protected[victim]:
            continue
        keep[victim] = False
    return np.flatnonzero(keep)


def cut_chunks(
    target: Atoms,
    uncertainty: Sequence[float],
    percentile: float,
    cutoff: float,
    max_chunks: int,
    mode: ChunkMode = "cluster",
    merge_distance: float | None = None,
    vacuum: float = 6.0,
    cell: Sequence[float] | None = None,
    min_distance_factor: float = 0.7,
) -> tuple[float, list[int], ChunkGroups, list[Chunk]]:
    """Threshold, uncertain atoms, their grouping and the chunks: the whole selection of one iteration.

    ``merge_distance`` defaults to ``cutoff / 2``: a chunk with two central atoms that far apart is about
    1.3 x a single one, while merging atoms up to ``cutoff`` apart would give chunks of ~2x the atoms.
    """
    check_target_size(target, cutoff)
    if len(uncertainty) != len(target):
        raise ValueError(f"{len(uncertainty)} uncertainties for a target of {len(target)} atoms")
    if mode == "periodic":
        cell = list(cell) if cell is not None else [2 * cutoff + 1.0] * 3
    threshold, uncertain = select_uncertain_atoms(uncertainty, percentile)
    merge = 0.5 * cutoff if merge_distance is None else merge_distance
    groups = group_centres(target, uncertain, max_chunks, merge, mode=mode, cutoff=cutoff, cell=cell)
    chunks = [cut_chunk(target, g, cutoff, mode=mode, vacuum=vacuum, cell=cell,
                        min_distance_factor=min_distance_factor) for g in groups.groups]
    return threshold, uncertain, groups, chunks
