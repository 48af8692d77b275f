import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from jobflow import run_locally

from almat.oracle import AseOracleMaker, CalculatorSpec, CalculatorSpecError, label_with_calculator
from almat.schemas import LabelStatus, to_structure

EMT_SPEC = CalculatorSpec("ase.calculators.emt", "EMT")


class NaNCalculator(Calculator):
    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": float("nan"), "forces": np.zeros((len(self.atoms), 3))}


@pytest.fixture
def cu():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=3)
    return atoms


def test_emt_label_matches_direct_calculation(cu):
    label = label_with_calculator(to_structure(cu), EMT_SPEC, campaign="t")
    ref = cu.copy()
    ref.calc = EMT()
    assert label.status == LabelStatus.ok
    assert label.energy == pytest.approx(ref.get_potential_energy())
    np.testing.assert_allclose(label.forces, ref.get_forces(), atol=1e-10)
    np.testing.assert_allclose(label.stress, ref.get_stress(voigt=False), atol=1e-10)
    assert label.oracle == "ase:ase.calculators.emt.EMT" and label.oracle_fingerprint == EMT_SPEC.fingerprint
    assert label.wall_time > 0


def test_failures_become_failed_labels(cu):
    si = to_structure(bulk("Si", "diamond", a=5.43))
    bad = label_with_calculator(si, EMT_SPEC)
    assert bad.status == LabelStatus.failed and "No EMT-potential for Si" in bad.reason
    nan = label_with_calculator(to_structure(cu), EMT_SPEC, calculator=NaNCalculator())
    assert nan.status == LabelStatus.failed and "non-finite energy" in nan.reason


def test_spec_errors_are_one_line():
    with pytest.raises(CalculatorSpecError, match="cannot import calculator module 'not_a_module'"):
        CalculatorSpec("not_a_module", "X").load()
    with pytest.raises(CalculatorSpecError, match="has no calculator 'Nope'"):
        CalculatorSpec("ase.calculators.emt", "Nope").load()
    with pytest.raises(CalculatorSpecError, match="dotted Python name"):
        CalculatorSpec("os; rm -rf /", "X")
    with pytest.raises(CalculatorSpecError, match="cannot create"):
        CalculatorSpec("ase.atoms", "Atoms", {"symbols": "Xx"}).load()
    with pytest.raises(CalculatorSpecError, match="is not an ASE calculator"):
        CalculatorSpec("collections", "OrderedDict").load()


def test_fingerprint_depends_on_settings():
    a = CalculatorSpec("ase.calculators.lj", "LennardJones", {"sigma": 2.3})
    b = CalculatorSpec("ase.calculators.lj", "LennardJones", {"sigma": 2.4})
    assert a.fingerprint != b.fingerprint
    assert a.fingerprint == CalculatorSpec.from_string("ase.calculators.lj.LennardJones", sigma=2.3).fingerprint


def test_oracle_job_writes_structure_and_label(cu, job_store, db):
    job = AseOracleMaker(calculator=EMT_SPEC).make(to_structure(cu), campaign="camp", iteration=3)
    responses = run_locally(job, store=job_store, log=False, ensure_success=True)
    label = responses[job.uuid][1].output
    assert label.ok and label.job_uuid == job.uuid
    stored = db.labels.query_one({"label_id": label.label_id})
    assert stored["campaign"] == "camp" and stored["iteration"] == 3 and stored["energy"] == label.energy
    assert db.structures.count({"campaign": "camp", "structure_hash": label.structure_hash}) == 1
    # a rerun of the same label job never duplicates the label
    run_locally(AseOracleMaker(calculator=EMT_SPEC).make(to_structure(cu), campaign="camp", iteration=3),
                store=job_store, log=False, ensure_success=True)
    assert db.labels.count({"campaign": "camp"}) == 1
