"""Derivative-structure enumeration of partially occupied structures (pure functions).

Details: ``docs/architecture.md``, module notes (almat/enumeration/core.py)."""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
from pymatgen.core import DummySpecies, Element, Species, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from almat.schemas.structure import structure_hash

logger = logging.getLogger(__name__)

__all__ = [
    "EnumerationError",
    "EnumeratedStructure",
    "enumerate_derivatives",
    "enumlib_available",
    "ewald_energy",
    "set_occupancy",
    "write_structures",
]

#: how far occupancy × number of sites may be from a whole number of atoms (CIF occupancies are rounded)
COUNT_TOLERANCE = 0.02
#: Ewald energies (eV) closer than this are compared with StructureMatcher during deduplication
EWALD_TIE = 1e-4
#: Ewald energies per atom (eV/atom) this close rank as tied (absolute): far above the summation's float
#: noise (~1e-14 eV/atom, varies between CPUs), far below real gaps (>= 1e-3 eV/atom in the argyrodite)
EWALD_RANK_TOL = 1e-8
VACANCY = "X"

Backend = Literal["auto", "icet", "enumlib"]


class EnumerationError(ValueError):
    """The structure can't be enumerated as asked; the message says why and what would work."""


@dataclass
class EnumeratedStructure:
    """One ordered structure with its rank and Ewald energy (eV per cell, None when unsorted)."""

    structure: Structure
    rank: int
    ewald_energy: float | None
    cell_size: int
    backend: str
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# occupancies


def _species_matches(sp, target: Species | Element) -> bool:
    if isinstance(target, Species):
        return isinstance(sp, Species) and sp == target
    return getattr(sp, "symbol", None) == target.symbol


def _parse_species(species: str) -> Species | Element:
    try:
        sp = Species.from_str(species)
        if sp.oxi_state is None:
            return Element(sp.symbol)
        return sp
    except ValueError:
        try:
            return Element(species)
        except ValueError:
            raise EnumerationError(f"not a species or element: {species!r} (e.g. 'Li+' or 'Li')") from None


def set_occupancy(structure: Structure, species: str, fraction: float) -> Structure:
    """A copy of ``structure`` with ``species`` at occupancy ``fraction`` on every site where it is partial.

    ``species`` is ``"Li+"`` (matches that oxidation state only) or ``"Li"`` (any Li). Sites where the
    species is fully occupied are left alone. Raises ``EnumerationError`` when no site is partially
    occupied by the species, or when the new occupancies of a site would sum to more than 1.
    """
    if not 0.0 < fraction <= 1.0:
        raise EnumerationError(f"occupancy must be in (0, 1], got {fraction}")
    target = _parse_species(species)
    new = structure.copy()
    changed = 0
    for i, site in enumerate(structure):
        comp = site.species
        if site.is_ordered and comp.num_atoms >= 1 - 1e-8:
            continue
        matching = [sp for sp in comp if _species_matches(sp, target)]
        if not matching:
            continue
        occ = {sp: amt for sp, amt in comp.items()}
        for sp in matching:
            occ[sp] = fraction
        total = sum(occ.values())
        if total > 1 + 1e-8:
            raise EnumerationError(
                f"site {i} ({site.species_string} at {np.round(site.frac_coords, 4).tolist()}): setting "
                f"{species} to {fraction} gives a total occupancy of {total:.3f} > 1"
            )
        new.replace(i, occ, coords=site.frac_coords, properties=site.properties)
        changed += 1
    if not changed:
        raise EnumerationError(f"no site is partially occupied by {species} in {structure.composition.formula}")
    return new


@dataclass
class _Sublattice:
    """Symmetry-equivalent sites of the parent cell sharing species and occupancies."""

    indices: list[int]
    occupancy: dict  # species -> occupancy, as in the parent
    label: str

    @property
    def ordered(self) -> bool:
        return len(self.occupancy) == 1 and abs(sum(self.occupancy.values()) - 1) < 1e-8

    @property
    def vacancy(self) -> float:
        return max(0.0, 1.0 - sum(self.occupancy.values()))

    def symbols(self) -> list[str]:
        syms = [sp.symbol for sp in self.occupancy]
        if self.vacancy > 1e-8:
            syms.append(VACANCY)
        return syms

    def targets(self, size: int) -> dict[str, int] | None:
        """Whole numbers of atoms per symbol in a supercell of ``size`` parent cells, None if not whole."""
        n = len(self.indices) * size
        out: dict[str, int] = {}
        for sp, occ in self.occupancy.items():
            count = occ * n
            if abs(count - round(count)) > COUNT_TOLERANCE:
                return None
            out[sp.symbol] = int(round(count))
        if self.vacancy > 1e-8:
            out[VACANCY] = n - sum(out.values())
            if out[VACANCY] < 0:
                return None
        return out

    def suggestion(self, sizes: list[int]) -> str:
        parts = []
        for size in sizes[:3]:
            n = len(self.indices) * size
            for sp, occ in self.occupancy.items():
                lo, hi = math.floor(occ * n), math.ceil(occ * n)
                options = sorted({k for k in (lo, hi) if 0 < k <= n})
                fr = " or ".join(f"{k / n:.4g} ({k}/{n})" for k in options)
                parts.append(f"{sp} on {n} sites (cell size {size}): {fr}")
        return "; ".join(parts)


def _sublattices(structure: Structure, symm_prec: float) -> list[_Sublattice]:
    try:
        sym = SpacegroupAnalyzer(structure, symprec=symm_prec).get_symmetrized_structure()
        groups = sym.equivalent_indices
        wyckoffs = sym.wyckoff_symbols
    except Exception:  # noqa: BLE001 - spglib can fail on odd cells; fall back to grouping by species
        logger.warning("symmetry analysis failed; sites are grouped by species and occupancy only")
        by_occ: dict[str, list[int]] = {}
        for i, site in enumerate(structure):
            by_occ.setdefault(str(site.species), []).append(i)
        groups, wyckoffs = list(by_occ.values()), ["?"] * len(by_occ)
    out = []
    for idx, wyck in zip(groups, wyckoffs):
        # symmetry-equivalent sites can still differ in occupancy if the input is inconsistent
        by_occ: dict[str, list[int]] = {}
        for i in idx:
            by_occ.setdefault(str(structure[i].species), []).append(i)
        for members in by_occ.values():
            site = structure[members[0]]
            out.append(_Sublattice(
                indices=sorted(members),
                occupancy=dict(site.species.items()),
                label=f"{site.species_string} ({wyck}, {len(members)} sites, e.g. site {members[0]} at "
                      f"{np.round(site.frac_coords, 4).tolist()})",
            ))
    return out


_NO_SORT = "or skip the ranking (sort_criteria=None; `almat enumerate --no-sort`)"


def _check_oxidation_states(structure: Structure) -> None:
    missing = sorted({str(sp) for sp in structure.composition if getattr(sp, "oxi_state", None) is None
                      or isinstance(sp, DummySpecies)})
    if missing:
        raise EnumerationError(
            f"Ewald ranking needs oxidation states on every species; missing on {', '.join(missing)}. "
            "Add them (e.g. structure.add_oxidation_state_by_element({'Li': 1, ...}) or "
            f"add_oxidation_state_by_guess()), {_NO_SORT}"
        )
    charge = sum(sp.oxi_state * amt for sp, amt in structure.composition.items())
    if abs(charge) > 1e-3:
        raise EnumerationError(
            f"Ewald ranking needs a charge-neutral structure; this one has {charge:+.4g} e per cell with these "
            f"occupancies and oxidation states. Check them (set_occupancy), {_NO_SORT}"
        )
    for site in structure:
        symbols = [sp.symbol for sp in site.species]
        if len(symbols) != len(set(symbols)):
            raise EnumerationError(
                f"site {site.species_string} mixes oxidation states of one element; the icet backend "
                "enumerates elements, so it can't place them apart. Use backend='enumlib' (enum.x) or "
                "give the site one oxidation state"
            )


def ewald_energy(structure: Structure) -> float:
    """Ewald energy (eV per cell) of an ordered structure with oxidation states."""
    from pymatgen.analysis.ewald import EwaldSummation

    return float(EwaldSummation(structure).total_energy)


# --------------------------------------------------------------------------------------------------
# backends


def enumlib_available() -> bool:
    """Whether enumlib's executables (``enum.x`` and ``makestr.x``) are on ``PATH``."""
    enum_cmd = shutil.which("enum.x") or shutil.which("multienum.x")
    makestr_cmd = shutil.which("makestr.x") or shutil.which("makeStr.x") or shutil.which("makeStr.py")
    return bool(enum_cmd and makestr_cmd)


def _resolve_backend(backend: str) -> str:
    if backend == "auto":
        return "enumlib" if enumlib_available() else "icet"
    if backend == "enumlib":
        if not enumlib_available():
            raise EnumerationError(
                "backend='enumlib' needs enumlib's enum.x and makestr.x on PATH (build them from "
                "https://github.com/msg-byu/enumlib); use backend='icet' or 'auto' instead"
            )
        return "enumlib"
    if backend == "icet":
        return "icet"
    raise EnumerationError(f"unknown backend {backend!r}; choose 'auto', 'icet' or 'enumlib'")


def _n_labelings(subs: list[_Sublattice], size: int) -> float:
    """Labelings icet must hold for one supercell shape: product of multinomials over sublattices."""
    total = 1.0
    for s in subs:
        targets = s.targets(size)
        n = len(s.indices) * size
        log_multi = math.lgamma(n + 1) - sum(math.lgamma(c + 1) for c in targets.values())
        total *= math.exp(log_multi)
    return total


def _icet_stream(
    structure: Structure,
    subs: list[_Sublattice],
    sizes: list[int],
    symprec: float,
) -> Iterator[tuple[int, Structure]]:
    """Yield ``(size, ordered Structure)`` from icet, filtered to the target composition per sublattice."""
    try:
        from icet.tools import enumerate_structures
    except ImportError as exc:
        raise EnumerationError(
            f"the icet backend needs icet (pip install icet), and enumlib is not on PATH either: {exc}"
        ) from None
    from ase import Atoms

    nsites = len(structure)
    site_symbols: list[list[str]] = [[] for _ in range(nsites)]
    site_sub = np.empty(nsites, dtype=int)
    for k, s in enumerate(subs):
        for i in s.indices:
            site_symbols[i] = s.symbols()
            site_sub[i] = k
    species_of = []  # per parent site: element symbol -> pymatgen species (with oxidation state)
    for site in structure:
        species_of.append({sp.symbol: sp for sp in site.species})

    atoms = Atoms(
        symbols=[syms[0] if syms[0] != VACANCY else "H" for syms in site_symbols],
        scaled_positions=structure.frac_coords,
        cell=structure.lattice.matrix,
        pbc=True,
    )
    # spglib must see the sublattices as they are: label the parent sites by sublattice
    atoms.set_atomic_numbers([1 + int(k) for k in site_sub])
    # icet concentration windows (fraction of all sites) prune early; exact filter per sublattice below
    all_symbols = sorted({sym for syms in site_symbols for sym in syms})
    for size in sizes:
        targets = [s.targets(size) for s in subs]
        total_sites = nsites * size
        totals: Counter = Counter()
        for t in targets:
            totals.update(t)
        restrictions = {sym: ((totals[sym] - 0.5) / total_sites, (totals[sym] + 0.5) / total_sites)
                        for sym in all_symbols if len(all_symbols) > 1}
        sub_of_site = np.tile(site_sub, size)
        for atoms_out in enumerate_structures(
            atoms, [size], site_symbols, concentration_restrictions=restrictions or None, symprec=symprec
        ):
            symbols = np.array(atoms_out.get_chemical_symbols())
            ok = True
            for k, t in enumerate(targets):
                got = Counter(symbols[sub_of_site == k].tolist())
                if any(got.get(sym, 0) != n for sym, n in t.items()):
                    ok = False
                    break
            if not ok:
                continue
            keep = symbols != VACANCY
            parent_index = np.tile(np.arange(nsites), size)[keep]
            species = [species_of[p][sym] for p, sym in zip(parent_index, symbols[keep])]
            s = Structure(
                atoms_out.cell[:],
                species,
                atoms_out.get_positions()[keep],
                coords_are_cartesian=True,
            )
            yield size, s


def _enumlib_run(structure: Structure, min_cell_size, max_cell_size, symm_prec, refine_structure,
                 max_disordered_sites, n_keep, sort_criteria) -> list[tuple[int, Structure, float | None]]:
    from pymatgen.transformations.advanced_transformations import EnumerateStructureTransformation

    trans = EnumerateStructureTransformation(
        min_cell_size=min_cell_size,
        max_cell_size=max_cell_size if max_disordered_sites is None else None,
        symm_prec=symm_prec,
        refine_structure=refine_structure,
        max_disordered_sites=max_disordered_sites,
        sort_criteria=sort_criteria or "ewald",
    )
    ranked = trans.apply_transformation(structure, return_ranked_list=n_keep)
    if not isinstance(ranked, list):
        ranked = [{"structure": ranked}]
    out = []
    for entry in ranked:
        s = entry["structure"]
        size = max(1, round(len(s) / max(1, structure.composition.num_atoms)))
        out.append((size, s, entry.get("energy")))
    return out


# --------------------------------------------------------------------------------------------------
# the enumeration


def _sizes(subs, min_cell_size, max_cell_size, max_disordered_sites) -> list[int]:
    n_dis = sum(len(s.indices) for s in subs if not s.ordered)
    if max_disordered_sites is not None:
        if n_dis == 0:
            return [min_cell_size]
        top = max(min_cell_size, max_disordered_sites // n_dis)
        return list(range(min_cell_size, top + 1))
    if max_cell_size < min_cell_size:
        raise EnumerationError(f"max_cell_size ({max_cell_size}) < min_cell_size ({min_cell_size})")
    return list(range(min_cell_size, max_cell_size + 1))


def _rank(candidates: list[tuple[float, int, Structure]]) -> list[tuple[float, int, Structure]]:
    """Lowest Ewald energy per atom first, the same order on any CPU.

    Neighbours (in energy) closer than ``EWALD_RANK_TOL`` eV/atom form one tie group, ordered by number
    of sites, then ``structure_hash`` (sorted species and rounded coordinates), never by float noise.
    """

    def per_atom(c):
        return c[0] / len(c[2])

    def tie_break(c):
        return len(c[2]), structure_hash(c[2])

    ranked: list = []
    group: list = []
    for c in sorted(candidates, key=per_atom):
        if group and per_atom(c) - per_atom(group[-1]) > EWALD_RANK_TOL:
            ranked += sorted(group, key=tie_break)
            group = []
        group.append(c)
    return ranked + sorted(group, key=tie_break)


def _distinct(ranked: list[tuple[float | None, int, Structure]], n_structures: int) -> list[tuple[float | None, int, Structure]]:
    """Walk the ranked list and keep structures not equivalent (StructureMatcher) to one already kept."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher()
    kept: list[tuple[float | None, int, Structure]] = []
    n_dupes = 0
    for energy, size, s in ranked:
        rivals = [k for k in kept if k[1] == size and (energy is None or k[0] is None or abs(k[0] - energy) < EWALD_TIE)]
        if any(matcher.fit(k[2], s) for k in rivals):
            n_dupes += 1
            continue
        kept.append((energy, size, s))
        if len(kept) >= n_structures:
            break
    if n_dupes:
        logger.info("dropped %d symmetry-equivalent structures (StructureMatcher)", n_dupes)
    return kept


def enumerate_derivatives(
    structure: Structure,
    min_cell_size: int = 1,
    max_cell_size: int = 1,
    symm_prec: float = 0.1,
    refine_structure: bool = False,
    max_disordered_sites: int | None = None,
    n_structures: int = 100,
    sort_criteria: str | None = "ewald",
    backend: Backend = "auto",
    max_candidates: int = 20000,
    max_labelings: float = 5e6,
) -> list[EnumeratedStructure]:
    """Ordered derivative structures of a disordered ``structure``, distinct and ranked by Ewald energy.

    Parameters
    ----------
    structure
        A structure with partial occupancies (oxidation states needed for Ewald ranking).
    min_cell_size, max_cell_size
        Supercell sizes, in multiples of the given cell.
    symm_prec
        Symmetry tolerance (Å) for finding the sublattices and the parent's symmetry.
    refine_structure
        Refine the structure with spglib (conventional standard cell) first.
    max_disordered_sites
        Instead of ``max_cell_size``: grow the cell while it has at most this many disordered sites.
    n_structures
        How many distinct structures to return (the lowest in Ewald energy).
    sort_criteria
        ``"ewald"`` (rank by Ewald energy; needs a charge-neutral structure with oxidation states) or
        ``None`` (the backend's enumeration order).
    backend
        ``"auto"``, ``"icet"`` or ``"enumlib"``.
    max_candidates
        Cap on the structures kept from icet's stream for ranking; the stream stops there (logged).
    max_labelings
        Refuse a cell size whose labelings (before symmetry reduction) exceed this: icet holds them all
        in memory (about 2 GB for 2.7 million in the argyrodite's doubled primitive cell).
    """
    _check_request(structure, sort_criteria, n_structures)
    start = time.perf_counter()
    chosen = _resolve_backend(backend)
    if refine_structure:
        structure = SpacegroupAnalyzer(structure, symprec=symm_prec).get_refined_structure()
    subs = _sublattices(structure, symm_prec)
    ok_sizes = _realisable_sizes(subs, _sizes(subs, min_cell_size, max_cell_size, max_disordered_sites))
    if sort_criteria == "ewald":
        _check_oxidation_states(structure)

    if chosen == "enumlib":
        candidates = _enumlib_candidates(structure, min_cell_size, max_cell_size, symm_prec, max_disordered_sites,
                                         n_structures, sort_criteria)
    else:
        candidates = _icet_candidates(structure, subs, ok_sizes, symm_prec, max_candidates, max_labelings)
        if sort_criteria == "ewald":
            candidates = [(ewald_energy(s), size, s) for _, size, s in candidates]
    n_streamed = len(candidates)

    if sort_criteria == "ewald":
        candidates = _rank(candidates)
    kept = _distinct(candidates, n_structures)
    logger.info("enumerated %s (%d sites) with %s at cell sizes %s: %d candidates, %d distinct kept in %.1f s",
                structure.composition.reduced_formula, len(structure), chosen, ok_sizes, n_streamed, len(kept),
                time.perf_counter() - start)
    return [EnumeratedStructure(structure=s, rank=i, ewald_energy=e, cell_size=size, backend=chosen)
            for i, (e, size, s) in enumerate(kept)]


def _check_request(structure: Structure, sort_criteria: str | None, n_structures: int) -> None:
    if structure.is_ordered:
        raise EnumerationError(
            f"{structure.composition.formula} is already ordered: nothing to enumerate "
            "(set a partial occupancy first, e.g. set_occupancy(structure, 'Li+', 0.5))"
        )
    if sort_criteria not in ("ewald", None):
        raise EnumerationError(f"sort_criteria must be 'ewald' or None, got {sort_criteria!r}")
    if n_structures < 1:
        raise EnumerationError("n_structures must be at least 1")


def _realisable_sizes(subs: list[_Sublattice], sizes: list[int]) -> list[int]:
    """The cell sizes at which every occupancy gives a whole number of atoms; an error if there is none."""
    disordered = [s for s in subs if not s.ordered]
    ok_sizes = [k for k in sizes if all(s.targets(k) is not None for s in disordered)]
    if not ok_sizes:
        bad = next(s for s in disordered if any(s.targets(k) is None for k in sizes))
        raise EnumerationError(
            f"the occupancies of {bad.label} give no whole number of atoms at cell sizes {sizes}: "
            f"{bad.suggestion(sizes)}. Set a realisable occupancy (set_occupancy) or allow larger cells"
        )
    skipped = sorted(set(sizes) - set(ok_sizes))
    if skipped:
        logger.info("cell sizes %s skipped: occupancies give no whole number of atoms there", skipped)
    return ok_sizes


def _enumlib_candidates(structure, min_cell_size, max_cell_size, symm_prec, max_disordered_sites, n_structures,
                        sort_criteria) -> list[tuple[float | None, int, Structure]]:
    """``(energy, cell size, structure)`` from enumlib; energies are Ewald's when ranking by them."""
    candidates = []
    for size, s, energy in _enumlib_run(structure, min_cell_size, max_cell_size, symm_prec, False,
                                        max_disordered_sites, max(n_structures * 10, n_structures), sort_criteria):
        if sort_criteria == "ewald":
            energy = ewald_energy(s)
        candidates.append((energy, size, s))
    return candidates


def _icet_candidates(structure, subs, ok_sizes, symm_prec, max_candidates,
                     max_labelings) -> list[tuple[None, int, Structure]]:
    """``(None, cell size, structure)`` from icet's stream, at most ``max_candidates`` (logged when capped);
    a cell size with more than ``max_labelings`` labelings is an error."""
    disordered = [s for s in subs if not s.ordered]
    for size in ok_sizes:
        n_lab = _n_labelings(disordered, size)
        if n_lab > max_labelings:
            raise EnumerationError(
                f"cell size {size} of {structure.composition.reduced_formula} ({len(structure)} sites) has "
                f"~{n_lab:.3g} labelings before symmetry reduction (limit max_labelings={max_labelings:.3g}); "
                "icet would hold them all in memory. Use the primitive cell, smaller cell sizes, or raise "
                "max_labelings if you have the memory (about 0.7 GB per million)"
            )
    candidates = []
    for size, s in _icet_stream(structure, disordered + [x for x in subs if x.ordered], ok_sizes, symprec=symm_prec):
        candidates.append((None, size, s))
        if len(candidates) >= max_candidates:
            logger.warning(
                "enumeration stopped at max_candidates=%d structures (cell sizes %s): the ranking covers "
                "only these; raise max_candidates or reduce the cell sizes for a complete ranking",
                max_candidates, ok_sizes,
            )
            break
    return candidates


# --------------------------------------------------------------------------------------------------
# output


def write_structures(structures, out_dir: str | Path, fmt: str = "cif", prefix: str = "") -> list[Path]:
    """Write ordered structures as ``{prefix}{index:04d}.cif`` or ``.../POSCAR`` files; returns the paths.

    ``structures``: pymatgen ``Structure``s, ``EnumeratedStructure``s or ``StructureDoc``s.
    ``fmt``: ``"cif"`` (one ``NNNN.cif`` per structure) or ``"poscar"`` (``NNNN.vasp``).
    """
    fmt = fmt.lower()
    if fmt not in ("cif", "poscar"):
        raise ValueError(f"fmt must be 'cif' or 'poscar', got {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, item in enumerate(structures):
        s = getattr(item, "structure", item)
        if not isinstance(s, Structure):
            raise TypeError(f"item {i}: expected a Structure, got {type(s).__name__}")
        path = out / f"{prefix}{i:04d}.{'cif' if fmt == 'cif' else 'vasp'}"
        if fmt == "cif":
            s.to(filename=str(path), fmt="cif")
        else:
            s.to(filename=str(path), fmt="poscar")
        paths.append(path)
    return paths
