"""Enumeration of the Li6PS5Cl argyrodite (Li+ at 0.5 on 48h) with the icet backend."""

from __future__ import annotations

import itertools
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from typer.testing import CliRunner

from almat.cli import app
from almat.enumeration import EnumerationError, enumerate_derivatives, set_occupancy, write_structures
from almat.enumeration.cli import enumerate_file, parse_occupancy
from almat.enumeration.core import EWALD_RANK_TOL, _rank
from almat.schemas import structure_hash

pytest.importorskip("icet")

CIF = Path(__file__).parents[1] / "test_data" / "structures" / "Li6PS5Cl_argyrodite.cif"
#: distinct orderings of 6 Li on the 12 Li sites of the primitive cell (Burnside count, checked below)
N_PRIMITIVE = 48
#: ... and of 4 Li (Li at 1/3: a charged target, -2 e per cell, enumerated without Ewald ranking)
N_THIRD = 27


def _read() -> Structure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_file(str(CIF))


@pytest.fixture(scope="module")
def parent() -> Structure:
    return set_occupancy(_read(), "Li+", 0.5).get_primitive_structure()


@pytest.fixture(scope="module")
def enumerated(parent):
    return enumerate_derivatives(parent, n_structures=100, backend="icet")


def test_reference_cif():
    s = _read()
    assert len(s) == 76
    assert s.lattice.a == pytest.approx(9.859)
    li = [site for site in s if site.species_string.startswith("Li")]
    assert len(li) == 48 and all(site.species.num_atoms == pytest.approx(0.56) for site in li)


def test_set_occupancy():
    s = _read()
    half = set_occupancy(s, "Li+", 0.5)
    assert half.composition["Li+"] == pytest.approx(24.0)
    assert half.composition["S2-"] == pytest.approx(20.0)  # untouched
    # the element alone matches too
    assert set_occupancy(s, "Li", 0.25).composition["Li+"] == pytest.approx(12.0)
    with pytest.raises(EnumerationError, match="no site is partially occupied by Na"):
        set_occupancy(s, "Na+", 0.5)
    with pytest.raises(EnumerationError, match=r"in \(0, 1\]"):
        set_occupancy(s, "Li+", 1.5)


def test_primitive_count_and_distinct(parent, enumerated):
    assert len(parent) == 19  # 12 Li sites at 0.5 + P + 5 S + Cl
    assert len(enumerated) == N_PRIMITIVE
    structures = [r.structure for r in enumerated]
    assert all(s.is_ordered and len(s) == 13 for s in structures)
    assert {s.composition.reduced_formula for s in structures} == {"Li6PS5Cl"}
    assert all(s.composition["Li+"] == 6 for s in structures)  # oxidation states kept
    # ranked by Ewald energy per atom, lowest first; ties (to float noise) in structure-hash order
    energies = np.array([r.ewald_energy / len(r.structure) for r in enumerated])
    assert np.all(np.diff(energies) >= -EWALD_RANK_TOL)
    ties = np.abs(np.diff(energies)) <= EWALD_RANK_TOL
    assert ties.any()  # the argyrodite has distinct orderings with equal Ewald energies
    hashes = [structure_hash(s) for s in structures]
    assert all(hashes[i] < hashes[i + 1] for i in np.flatnonzero(ties))
    assert [r.rank for r in enumerated] == list(range(N_PRIMITIVE))
    # every returned structure is distinct under StructureMatcher; equivalent structures have equal Ewald
    # energies, so only the tied ones need comparing (all 48 at once take ~17 s)
    matcher = StructureMatcher()
    for i in np.flatnonzero(ties):
        assert not matcher.fit(structures[i], structures[i + 1])


@pytest.mark.parametrize("n_li, expected", [(6, N_PRIMITIVE), (4, N_THIRD)])
def test_count_matches_burnside(parent, n_li, expected):
    """Independent count: orbits of n_li-subsets of the 12 Li sites under the parent's space group."""
    li = [i for i, site in enumerate(parent) if not site.is_ordered]
    assert len(li) == 12
    frac = parent.frac_coords[li]
    perms = []
    for op in SpacegroupAnalyzer(parent, symprec=0.1).get_symmetry_operations():
        image = op.operate_multi(frac)
        d = image[:, None, :] - frac[None, :, :]
        d -= np.round(d)
        perm = np.argmin(np.linalg.norm(d, axis=2), axis=1)
        assert sorted(perm) == list(range(12))
        perms.append(tuple(perm))
    perms = set(perms)
    orbits = set()
    for subset in itertools.combinations(range(12), n_li):
        orbits.add(min(tuple(sorted(p[i] for i in subset)) for p in perms))
    assert len(orbits) == expected


def test_n_structures_and_cap(parent, caplog):
    top = enumerate_derivatives(parent, n_structures=5, backend="icet")
    assert len(top) == 5
    full = enumerate_derivatives(parent, n_structures=100, backend="icet")
    assert [r.ewald_energy for r in top] == pytest.approx([r.ewald_energy for r in full[:5]])
    with caplog.at_level(logging.WARNING, logger="almat.enumeration.core"):
        capped = enumerate_derivatives(parent, n_structures=100, backend="icet", max_candidates=10)
    assert len(capped) == 10
    assert "stopped at max_candidates=10" in caplog.text


def test_bad_inputs(parent):
    s = _read()
    ordered = Structure(s.lattice, ["Li", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(EnumerationError, match="already ordered"):
        enumerate_derivatives(ordered)
    # 0.56 x 12 sites = 6.72 Li: say which site and what would work
    with pytest.raises(EnumerationError, match=r"Li\+:0.56.*12 sites.*0\.5 \(6/12\) or 0\.5833 \(7/12\)"):
        enumerate_derivatives(s.get_primitive_structure())
    with pytest.raises(EnumerationError, match="enum.x"):
        enumerate_derivatives(parent, backend="enumlib")
    # the conventional cell: 48 Li sites, C(48, 24) labelings -> refused before icet allocates them
    with pytest.raises(EnumerationError, match="labelings before symmetry reduction"):
        enumerate_derivatives(set_occupancy(s, "Li+", 0.5), backend="icet")
    no_oxi = parent.copy()
    no_oxi.remove_oxidation_states()
    with pytest.raises(EnumerationError, match="oxidation states"):
        enumerate_derivatives(no_oxi)
    assert len(enumerate_derivatives(no_oxi, sort_criteria=None, n_structures=3)) == 3
    charged = set_occupancy(_read(), "Li+", 0.25).get_primitive_structure()  # 3 Li: +3 e per cell
    with pytest.raises(EnumerationError, match="charge-neutral.*sort_criteria=None.*--no-sort"):
        enumerate_derivatives(charged)


def test_rank_tie_break(enumerated):
    """Energies equal to 1e-14 eV/atom rank by structure hash, whatever their noise and input order."""
    a, b, low = (r.structure for r in enumerated[:3])
    first, second = sorted([a, b], key=structure_hash)
    e = -3200.0  # eV per 13-atom cell
    for noise_a, noise_b in [(1e-13, 0.0), (0.0, 1e-13)]:
        cands = [(e + noise_a, 1, a), (e + noise_b, 1, b), (e - 1.0, 1, low)]
        for order in itertools.permutations(cands):
            assert [c[2] for c in _rank(list(order))] == [low, first, second]
    # beyond the tolerance, energy decides
    assert [c[2] for c in _rank([(e, 1, first), (e - 13 * 1e-7, 1, second)])] == [second, first]


def test_cli_no_sort_charged_target(tmp_path):
    """Li at 1/3 (-2 e per cell): refused with a one-line hint by default, 27 structures with --no-sort."""
    args = ["enumerate", str(CIF), "--occupancy", "Li+=0.3333", "--primitive", "-o", str(tmp_path / "out")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.count("\n") == 1 and "error: Ewald ranking needs a charge-neutral" in res.output
    assert "--no-sort" in res.output
    res = CliRunner().invoke(app, args + ["--no-sort"])
    assert res.exit_code == 0, res.output
    files = sorted((tmp_path / "out").glob("*.cif"))
    assert len(files) == N_THIRD and f"{N_THIRD} structures written" in res.output
    assert Structure.from_file(str(files[-1])).composition.reduced_formula == "Li4PS5Cl"


def test_write_and_enumerate_file(tmp_path, enumerated):
    paths = write_structures(enumerated[:3], tmp_path / "cif")
    assert [p.name for p in paths] == ["0000.cif", "0001.cif", "0002.cif"]
    back = Structure.from_file(str(paths[0]))
    assert StructureMatcher().fit(back, enumerated[0].structure)
    poscars = write_structures([r.structure for r in enumerated[:2]], tmp_path / "pos", fmt="poscar")
    assert Structure.from_file(str(poscars[1])).composition.reduced_formula == "Li6PS5Cl"
    with pytest.raises(ValueError, match="fmt"):
        write_structures(enumerated[:1], tmp_path, fmt="xyz")

    out = enumerate_file(CIF, parse_occupancy(["Li+=0.5"]), primitive=True, max_structures=100,
                         out_dir=tmp_path / "cli", fmt="cif", backend="auto")
    assert len(out) == N_PRIMITIVE
    bad = tmp_path / "broken.cif"
    bad.write_text("data_x\n_cell_length_a 1\nnonsense\n")
    with pytest.raises(ValueError, match="broken.cif"):
        enumerate_file(bad, {"Li+": 0.5}, True, 10, tmp_path / "x", "cif", "auto")
    with pytest.raises(ValueError, match="SPECIES=FRACTION"):
        parse_occupancy(["Li+0.5"])


def test_enumerate_maker_records_structures(job_store):
    from jobflow import run_locally

    from almat.enumeration import EnumerateMaker
    from almat.schemas import StructureDoc
    from almat.stores import CampaignDB

    maker = EnumerateMaker(occupancy={"Li+": 0.5}, primitive=True, n_structures=10)
    job = maker.make(_read(), campaign="argyrodite")
    responses = run_locally(job, store=job_store, ensure_success=True)
    docs = [StructureDoc.model_validate(d) if isinstance(d, dict) else d
            for d in responses[job.uuid][1].output]
    assert len(docs) == 10
    assert all(d.source.value == "enumerated" and d.campaign == "argyrodite" for d in docs)
    assert [d.metadata["rank"] for d in docs] == list(range(10))
    assert docs[0].metadata["ewald_energy"] <= docs[-1].metadata["ewald_energy"]
    with CampaignDB.from_job_store(job_store) as db:
        stored = list(db.structures.query({"campaign": "argyrodite"}))
    assert len(stored) == 10
    assert {d["structure_hash"] for d in stored} == {d.structure_hash for d in docs}
    assert {d["formula"] for d in stored} == {"Li6PS5Cl"}
