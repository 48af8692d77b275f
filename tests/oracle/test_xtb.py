"""GFN1-xTB (tblite) as an oracle on an enumerated Li6PS5Cl primitive cell."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from jobflow import run_locally
from pymatgen.core import Structure

from almat.oracle import AseOracleMaker, label_with_calculator
from almat.oracle.xtb import GFN1_XTB, check_xtb_elements, xtb_spec
from almat.schemas import LabelDoc, StructureDoc, StructureSource

CIF = Path(__file__).parents[1] / "test_data" / "structures" / "Li6PS5Cl_enumerated_rank0.cif"


def _structure() -> Structure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_file(str(CIF))


def test_spec_and_element_check():
    assert GFN1_XTB.path == "tblite.ase.TBLite"
    assert GFN1_XTB.kwargs["method"] == "GFN1-xTB"
    assert GFN1_XTB.fingerprint != xtb_spec("GFN2-xTB").fingerprint
    check_xtb_elements(_structure())
    check_xtb_elements(["Li", "P", "S", "Cl", "Rn"])
    with pytest.raises(ValueError, match="no parameters for U, Pu"):
        check_xtb_elements(["Li", "U", "Pu"])
    with pytest.raises(ValueError, match="Fr"):
        check_xtb_elements(Atoms("CuFr", positions=[[0, 0, 0], [2, 0, 0]]))
    with pytest.raises(ValueError, match="unknown xTB method"):
        xtb_spec("GFN3")


def test_label_li6ps5cl_with_gfn1_xtb():
    pytest.importorskip("tblite.ase")
    s = _structure()
    assert s.composition.reduced_formula == "Li6PS5Cl" and len(s) == 13
    label = label_with_calculator(s, GFN1_XTB, source=StructureSource.enumerated)
    assert label.ok, label.reason
    forces = np.array(label.forces)
    assert forces.shape == (13, 3) and np.all(np.isfinite(forces))
    assert np.isfinite(label.energy) and label.energy < 0
    assert np.abs(forces.sum(axis=0)).max() < 1e-3  # no net force on a periodic cell
    assert np.abs(forces).max() > 1e-3  # an enumerated (unrelaxed) ordering is not at equilibrium
    assert label.stress is not None and np.all(np.isfinite(label.stress))
    assert label.oracle == "ase:tblite.ase.TBLite" and label.oracle_fingerprint == GFN1_XTB.fingerprint


def test_xtb_through_ase_oracle_maker(job_store):
    pytest.importorskip("tblite.ase")
    doc = StructureDoc(structure=_structure(), source=StructureSource.enumerated, campaign="lpsc", iteration=-1)
    job = AseOracleMaker(calculator=GFN1_XTB).make(doc)
    responses = run_locally(job, store=job_store, ensure_success=True)
    out = responses[job.uuid][1].output
    label = out if isinstance(out, LabelDoc) else LabelDoc.model_validate(out)
    assert label.ok and label.campaign == "lpsc"
    assert np.abs(np.array(label.forces).sum(axis=0)).max() < 1e-3
    # same structure, same calculator: the same numbers as the direct call
    direct = label_with_calculator(doc.structure, GFN1_XTB)
    assert label.energy == pytest.approx(direct.energy, abs=1e-6)
