"""Reading what a campaign's settings point at: start structures (files, ``ase.build.bulk`` prototypes,
inline structures), the pool of a pool campaign (files, prototypes, store queries; perturbed copies;
duplicates dropped) and the target of an NFT campaign. Every bad source is one ``ConfigError`` line."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.io import read
from pymatgen.core import Structure

from almat.campaign.initial import perturbed_structures
from almat.schemas import structure_hash, to_atoms, to_structure
from almat.schemas.section import ConfigError

logger = logging.getLogger(__name__)


def build_bulk(kwargs: dict) -> Atoms:
    """``ase.build.bulk(**kwargs)``; a bad prototype is a ``ConfigError``."""
    try:
        return bulk(**kwargs)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"cannot build bulk({kwargs}): {exc}") from None


def _path(file: Path, base_dir: Path | None, what: str) -> Path:
    path = file if file.is_absolute() or base_dir is None else base_dir / file
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    return path


def load_structure(source, base_dir: Path | None = None) -> Structure:
    """The ordered structure of a ``StructureSource`` (a relative file starts at ``base_dir``), repeated by
    its ``supercell``."""
    if source.bulk is not None:
        structure = to_structure(build_bulk(source.bulk))
    elif source.structure is not None:
        try:
            structure = Structure.from_dict(source.structure)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"cannot read the structure given inline: {exc}") from None
    else:
        path = _path(source.file, base_dir, "structure")
        try:
            structure = Structure.from_file(path)
        except Exception as exc:  # noqa: BLE001 - any parser error
            raise ConfigError(f"cannot read structure file {path}: {type(exc).__name__}: {exc}") from None
    if not structure.is_ordered:
        where = "an inline structure" if source.file is None else str(source.file)
        raise ConfigError(f"{where} is disordered: enumerate ordered structures first (almat enumerate)")
    return structure * source.supercell if source.supercell != [1, 1, 1] else structure


def load_structures(config) -> list[Structure]:
    """A campaign's start structures (its ``structures``; none for a kind without them)."""
    return [load_structure(s, config.base_dir) for s in getattr(config, "structures", [])]


def load_target(config) -> Structure:
    """An NFT campaign's target, with its vacancies and rattle; deterministic for a given config."""
    target = config.target
    structure = load_structure(target, config.base_dir)
    rng = np.random.default_rng(target.seed)
    if target.vacancies:
        if target.vacancies >= len(structure):
            raise ConfigError(
                f"target.vacancies ({target.vacancies}) must be fewer than the target's {len(structure)} atoms")
        structure = structure.copy()
        structure.remove_sites(sorted(rng.choice(len(structure), target.vacancies, replace=False).tolist()))
    if target.rattle_std > 0:
        cart = structure.cart_coords + rng.normal(0.0, target.rattle_std, size=(len(structure), 3))
        structure = Structure(structure.lattice, structure.species, cart, coords_are_cartesian=True)
    return structure


# -- pools ------------------------------------------------------------------------------------------


def _query_frames(query, db) -> list[Atoms]:
    if db is None:
        raise ConfigError("a pool 'query' source needs the store: load the pool inside a job or pass db=")
    out = []
    for raw in getattr(db, query.collection).query(query.filters, limit=query.limit or 0):
        a = to_atoms(raw["structure"])
        key = "label_id" if query.collection == "labels" else "structure_hash"
        a.info["pool_origin"] = f"{query.collection[:-1]}:{raw[key]}"
        if (raw.get("metadata") or {}).get("temperature") is not None:
            a.info["temperature"] = raw["metadata"]["temperature"]
        out.append(a)
    return out


def _file_frames(source, base_dir: Path | None) -> list[Atoms]:
    path = _path(source.file, base_dir, "pool")
    try:
        frames = read(path, index=source.index, format=source.format)
    except Exception as exc:  # noqa: BLE001 - any parser error
        raise ConfigError(f"cannot read pool file {path}: {type(exc).__name__}: {exc}") from None
    return [Atoms(a.get_chemical_symbols(), positions=a.get_positions(), cell=a.get_cell(), pbc=a.get_pbc(),
                  info={**a.info, "pool_origin": f"{path.name}#{k}"})
            for k, a in enumerate(frames if isinstance(frames, list) else [frames])]


def _raw_frames(source, base_dir: Path | None, db) -> list[Atoms]:
    if source.bulk is not None:
        return [build_bulk(source.bulk)]
    if source.structure is not None or source.structures is not None:
        return [to_atoms(Structure.from_dict(s))
                for s in (source.structures if source.structure is None else [source.structure])]
    if source.query is not None:
        return _query_frames(source.query, db)
    return _file_frames(source, base_dir)


def _repeat(atoms: Atoms, supercell: list[int]) -> Atoms:
    out = atoms.repeat(supercell)
    out.info.update(atoms.info)
    return out


def load_pool_source(source, base_dir: Path | None = None, db=None) -> list[Atoms]:
    """A ``PoolSource``'s structures as ASE Atoms (``info`` keeps e.g. an MD ``temperature``), repeated by
    its ``supercell``, with its perturbed copies."""
    frames = _raw_frames(source, base_dir, db)
    if source.supercell != [1, 1, 1]:
        frames = [_repeat(a, source.supercell) for a in frames]
    if source.perturb is None:
        return frames
    p, out = source.perturb, []
    rng = np.random.default_rng(p.seed)
    for atoms in frames:
        copies = perturbed_structures(to_structure(atoms), p.n + (not p.keep_original), p.rattle_std,
                                      p.max_strain, rng)
        for k, s in enumerate(copies):
            if k or p.keep_original:
                a = to_atoms(s)
                a.info.update({**atoms.info, "perturbation": k})
                out.append(a)
    return out


def load_pool(config, db=None) -> list[Atoms]:
    """A pool campaign's structures from all its sources, duplicates (same ``structure_hash``) dropped with
    a warning; an empty pool is a ``ValueError``. A ``query`` source needs the store (``db``)."""
    frames, seen, duplicates = [], set(), 0
    for source in config.pool:
        for atoms in load_pool_source(source, config.base_dir, db):
            h = structure_hash(atoms)
            duplicates += h in seen
            if h not in seen:
                seen.add(h)
                atoms.info["structure_hash"] = h
                frames.append(atoms)
    if duplicates:
        msg = f"{duplicates} duplicate structure(s) dropped from the pool"
        warnings.warn(msg, stacklevel=2)
        logger.warning(msg)
    if not frames:
        raise ValueError("the pool is empty: its sources gave no structure")
    return frames
