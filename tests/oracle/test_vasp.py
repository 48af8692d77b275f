"""VASP through atomate2, run under atomate2's mock (``monkeypatch_vasp``) with real reference outputs.

Reference data (tests/test_data/vasp/, see its README): real VASP outputs of NaCl and LiCl statics and
an FeO relaxation, laid out as atomate2 test data (``<case>/inputs``, ``<case>/outputs``). Those runs
did not use the MP input sets, so the mock checks only what they share with them: the POSCAR (and the
POTCAR symbols for NaCl and LiCl; MP uses Fe_pv where the FeO run used Fe). That the Makers write
exactly MPRelaxSet / MPStaticSet inputs is checked separately on enumerated Li6PS5Cl structures.
No POTCAR files are needed: the mock makes pymatgen write POTCAR.spec (the symbols) instead.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase.units import GPa
from jobflow import run_locally
from pymatgen.core import Structure
from pymatgen.io.vasp import Incar, Kpoints, Poscar
from pymatgen.io.vasp.sets import MPRelaxSet, MPStaticSet

from almat.oracle.vasp import (
    KBAR_TO_EV_PER_A3,
    VaspRelaxFlowMaker,
    VaspStaticOracleMaker,
    labels_from_task,
    vasp_stress_to_ase,
)
from almat.schemas import LabelDoc, StructureDoc, StructureSource
from almat.stores import CampaignDB

pytest.importorskip("atomate2")
from atomate2.utils.testing.vasp import monkeypatch_vasp  # noqa: E402

DATA = Path(__file__).parents[1] / "test_data"
VASP = DATA / "vasp"


@pytest.fixture
def mock_vasp(monkeypatch):
    yield from monkeypatch_vasp(monkeypatch, VASP)


def _poscar(case: str) -> Structure:
    return Poscar.from_file(VASP / case / "inputs" / "POSCAR").structure


def _enumerated(rank: int = 0) -> Structure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_file(str(DATA / "structures" / f"Li6PS5Cl_enumerated_rank{rank}.cif"))


def _output(responses, flow) -> object:
    return responses[flow.jobs[-1].uuid][1].output


def _labels(out) -> list[LabelDoc]:
    items = out if isinstance(out, list) else [out]
    return [x if isinstance(x, LabelDoc) else LabelDoc.model_validate(x) for x in items]


def test_stress_conversion():
    # 1 kBar = 0.1 GPa; VASP's positive (compressive) stress is negative in ASE's convention
    assert KBAR_TO_EV_PER_A3 == pytest.approx(6.241509e-4, rel=1e-6)
    s = vasp_stress_to_ase(np.diag([10.0, 10.0, 10.0]))
    assert s[0, 0] == pytest.approx(-10 * 0.1 * GPa)
    assert s[0, 0] < 0


@pytest.mark.parametrize(
    ("case", "energy", "max_force"),
    [("NaCl_static", -27.11090125, 1e-5), ("LiCl_displaced_static", -30.55407762, 0.0117)],
)
def test_static_oracle_with_reference_outputs(mock_vasp, job_store, tmp_path, case, energy, max_force):
    mock_vasp({"static": case}, {"static": {"check_inputs": ["poscar", "potcar"]}})
    structure = _poscar(case)
    maker = VaspStaticOracleMaker()
    flow = maker.make(StructureDoc(structure=structure, source=StructureSource.enumerated), campaign="c1", iteration=2)
    responses = run_locally(flow, store=job_store, create_folders=True, root_dir=tmp_path, ensure_success=True)
    [label] = _labels(_output(responses, flow))
    assert label.ok
    assert label.energy == pytest.approx(energy, abs=1e-8)
    forces = np.array(label.forces)
    assert forces.shape == (8, 3)
    assert np.abs(forces).max() <= max_force
    if case.startswith("LiCl"):
        assert np.abs(forces).max() == pytest.approx(0.0116, abs=1e-4)
    assert np.abs(forces.sum(axis=0)).max() < 1e-4
    # provenance
    vasp_uuid = flow.jobs[0].uuid
    assert label.job_uuid == vasp_uuid
    assert label.run_dir and Path(label.run_dir.split(":", 1)[-1]).is_dir()
    assert label.oracle == "vasp:MPStaticSet"
    assert label.oracle_fingerprint == maker.fingerprint
    assert label.oracle_settings["ENCUT"] == 520 and label.oracle_settings["kpoint_density"] == {"reciprocal_density": 100}
    assert label.oracle_settings["actual"]["potcar_symbols"] == MPStaticSet(structure).potcar_symbols
    assert label.source == StructureSource.enumerated and label.campaign == "c1" and label.iteration == 2
    with CampaignDB.from_job_store(job_store) as db:
        stored = db.labels.query_one({"label_id": label.label_id})
        assert stored is not None and stored["energy"] == pytest.approx(energy)
        assert db.structures.count({"campaign": "c1"}) == 1


def test_nacl_stress_sign_and_units(mock_vasp, job_store, tmp_path):
    mock_vasp({"static": "NaCl_static"}, {"static": {"check_inputs": ["poscar"]}})
    flow = VaspStaticOracleMaker().make(_poscar("NaCl_static"))
    responses = run_locally(flow, store=job_store, create_folders=True, root_dir=tmp_path, ensure_success=True)
    [label] = _labels(_output(responses, flow))
    stress = np.array(label.stress)
    # VASP: hydrostatic -0.427 kBar (tensile); ASE convention: positive
    assert np.diag(stress) == pytest.approx([0.4272 * KBAR_TO_EV_PER_A3] * 3, rel=1e-3)
    assert np.allclose(stress, stress.T, atol=1e-9)


def test_relax_flow_trajectory_labels(mock_vasp, job_store, tmp_path):
    # MP would use Fe_pv; the reference run used Fe, so only the POSCAR is checked here
    mock_vasp({"relax": "FeO_relax"}, {"relax": {"check_inputs": ["poscar"]}})
    start = _poscar("FeO_relax")
    maker = VaspRelaxFlowMaker(trajectory_stride=5)
    flow = maker.make(StructureDoc(structure=start, source=StructureSource.enumerated), campaign="feo", iteration=0)
    responses = run_locally(flow, store=job_store, create_folders=True, root_dir=tmp_path, ensure_success=True)
    labels = _labels(_output(responses, flow))
    # 28 ionic steps, stride 5: steps 0, 5, 10, 15, 20, 25 and the final one (27)
    assert len(labels) == 7
    assert all(lb.ok and lb.source == StructureSource.relaxed for lb in labels)
    assert labels[-1].energy == pytest.approx(-28.21851457, abs=1e-8)
    assert labels[0].energy > labels[-1].energy
    assert np.abs(np.array(labels[0].forces)).max() == pytest.approx(1.61, abs=0.01)
    assert np.abs(np.array(labels[-1].forces)).max() == pytest.approx(0.0100, abs=5e-4)
    assert len({lb.structure_hash for lb in labels}) == 7
    assert len({lb.oracle_fingerprint for lb in labels}) == 1
    assert labels[0].oracle_fingerprint == maker.fingerprint
    assert labels[0].oracle_settings["actual"]["potcar_symbols"] == ["Fe", "O"]
    with CampaignDB.from_job_store(job_store) as db:
        assert db.labels.count({"campaign": "feo"}) == 7
        relaxed = list(db.structures.query({"campaign": "feo", "source": "relaxed"}))
        assert len(relaxed) == 1 and relaxed[0]["parent"] == StructureDoc(structure=start, source="init").structure_hash
    # stride 1: every ionic step
    full = labels_from_task(_task_doc(responses, flow), start, trajectory_stride=1)
    assert len(full) == 28


def _task_doc(responses, flow):
    return responses[flow.jobs[0].uuid][1].output


def test_unconverged_electronic_steps_give_failed_label(mock_vasp, job_store, tmp_path):
    """NaCl static with NELM = 10 and its first 10 electronic steps (derived, see the data README)."""
    mock_vasp({"static": "NaCl_static_unconverged"}, {"static": {"check_inputs": ["poscar", "potcar"]}})
    flow = VaspStaticOracleMaker().make(_poscar("NaCl_static"), campaign="u")
    responses = run_locally(flow, store=job_store, create_folders=True, root_dir=tmp_path, ensure_success=True)
    [label] = _labels(_output(responses, flow))
    assert not label.ok
    assert "electronic steps not converged" in label.reason and "NELM (10)" in label.reason
    assert label.energy is None
    with CampaignDB.from_job_store(job_store) as db:
        assert db.labels.query_one({"campaign": "u"})["status"] == "failed"


def test_custodian_giving_up_gives_failed_label(mock_vasp, monkeypatch, job_store, tmp_path):
    from custodian.custodian import MaxCorrectionsPerJobError

    import atomate2.vasp.jobs.base as base

    def gives_up(*args, **kwargs):
        raise MaxCorrectionsPerJobError("Max errors per job reached: 5.", True, 5, None)

    monkeypatch.setattr(base, "run_vasp", gives_up)
    flow = VaspStaticOracleMaker().make(_enumerated(0), campaign="g")
    responses = run_locally(flow, store=job_store, create_folders=True, root_dir=tmp_path)
    [label] = _labels(_output(responses, flow))
    assert not label.ok
    assert flow.jobs[0].uuid in label.reason and "no task document" in label.reason
    assert flow.jobs[0].uuid not in responses  # the VASP job itself failed


@pytest.mark.parametrize(("maker_cls", "set_cls", "job_name"),
                         [(VaspRelaxFlowMaker, MPRelaxSet, "relax"), (VaspStaticOracleMaker, MPStaticSet, "static")])
@pytest.mark.parametrize("rank", [0, 1])
def test_li6ps5cl_inputs_are_exactly_the_mp_sets(mock_vasp, monkeypatch, job_store, tmp_path, maker_cls, set_cls,
                                                 job_name, rank):
    """What VASP would read for enumerated Li6PS5Cl is what MPRelaxSet / MPStaticSet give."""
    import atomate2.vasp.jobs.base as base

    captured = tmp_path / "captured"

    def capture(*args, **kwargs):
        shutil.copytree(Path.cwd(), captured)
        raise RuntimeError("captured the inputs; VASP is not run here")

    monkeypatch.setattr(base, "run_vasp", capture)
    structure = _enumerated(rank)
    flow = maker_cls().make(structure)
    assert flow.jobs[0].name == job_name
    run_locally(flow, store=job_store, create_folders=True, root_dir=tmp_path)
    ref = set_cls(structure)
    written = sorted(p.name for p in captured.iterdir() if p.name.isupper() or p.name == "POTCAR.spec")
    assert written == ["INCAR", "KPOINTS", "POSCAR", "POTCAR.spec"]
    incar = Incar.from_file(captured / "INCAR")
    assert dict(incar) == dict(Incar.from_str(str(ref.incar)))
    assert str(Kpoints.from_file(captured / "KPOINTS")) == str(ref.kpoints)
    assert (captured / "POSCAR").read_text() == str(ref.poscar) or \
        Poscar.from_file(captured / "POSCAR").structure == ref.poscar.structure
    poscar = Poscar.from_file(captured / "POSCAR")
    assert poscar.site_symbols == ref.poscar.site_symbols and poscar.natoms == ref.poscar.natoms
    assert (captured / "POTCAR.spec").read_text().split() == ref.potcar_symbols == ["Li_sv", "P", "S", "Cl"]
    # the MP values, spelled out: a change in pymatgen's sets shows up here
    assert incar["ENCUT"] == 520 and incar["ISPIN"] == 2
    assert incar["EDIFF"] == pytest.approx(5e-5 * 13)  # EDIFF_PER_ATOM x 13 atoms
    if set_cls is MPRelaxSet:
        assert incar["NSW"] == 99 and incar["IBRION"] == 2 and incar["ISIF"] == 3
    else:
        assert incar["NSW"] == 0 and incar["LORBIT"] == 11
