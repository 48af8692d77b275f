"""Labels are never paid twice: same configuration + same oracle settings, across campaigns."""

from pathlib import Path

import numpy as np
import pytest
from almat_query_testutils import COUNTING_SPEC, CountingEMT, cu_structures
from ase.calculators.emt import EMT
from jobflow import Flow, run_locally
from pymatgen.core import Structure

from almat.oracle import AseOracleMaker, CalculatorSpec
from almat.query import query_labels, reuse_summary
from almat.schemas import LabelDoc, to_atoms

pytestmark = pytest.mark.filterwarnings("ignore:Some jobs are not connected")


def _label(structures, campaign, job_store, root, spec=COUNTING_SPEC, iteration=0):
    maker = AseOracleMaker(calculator=spec)
    jobs = [maker.make(s, campaign=campaign, iteration=iteration) for s in structures]
    before = CountingEMT.calls
    responses = run_locally(Flow(jobs), store=job_store, log=False, ensure_success=True,
                            create_folders=True, root_dir=root)
    labels = [responses[j.uuid][1].output for j in jobs]
    return labels, CountingEMT.calls - before, jobs


def test_second_campaign_pays_no_oracle_call(job_store, db, tmp_path):
    structures = cu_structures(4, seed=11)
    a, calls_a, _ = _label(structures, "a", job_store, tmp_path / "a")
    assert calls_a >= 4 and all(lab.ok and lab.reused_from is None for lab in a)
    assert all(Path(lab.run_dir).is_dir() and str(tmp_path / "a") in lab.run_dir for lab in a)

    b, calls_b, jobs_b = _label(structures, "b", job_store, tmp_path / "b", iteration=2)
    assert calls_b == 0
    for la, lb, job in zip(a, b, jobs_b):
        assert lb.campaign == "b" and lb.iteration == 2 and lb.reused_from == la.label_id
        assert lb.label_id != la.label_id and lb.structure_hash == la.structure_hash
        assert lb.energy == la.energy and lb.forces == la.forces and lb.stress == la.stress
        assert lb.job_uuid == job.uuid and lb.run_dir == la.run_dir and lb.wall_time == 0.0
    # b's labels and structures are in the store, linked to b
    assert sorted(query_labels(db, campaign="b").ids()) == sorted(lab.label_id for lab in b)
    assert db.structures.count({"campaign": "b"}) == 4
    assert reuse_summary(db) == {"a": {"labels": 4, "reused": 0, "oracle_calls": 4},
                                 "b": {"labels": 4, "reused": 4, "oracle_calls": 0}}

    # a third campaign reuses the original, not the copy
    c, calls_c, _ = _label(structures[:1], "c", job_store, tmp_path / "c")
    assert calls_c == 0 and c[0].reused_from == a[0].label_id

    # another oracle setting is another level of theory: it labels again
    other = CalculatorSpec("almat_query_testutils", "CountingEMT", {"asap_cutoff": True})
    d, calls_d, _ = _label(structures, "b", job_store, tmp_path / "d", spec=other)
    assert calls_d >= 4 and all(lab.reused_from is None for lab in d)
    assert {lab.oracle_fingerprint for lab in d} == {other.fingerprint} != {COUNTING_SPEC.fingerprint}

    # rerunning campaign a's job returns its own label, unchanged and without a call
    again, calls_again, _ = _label(structures[:1], "a", job_store, tmp_path / "e")
    assert calls_again == 0 and again[0].label_id == a[0].label_id and again[0].reused_from is None


def test_reuse_with_permuted_sites_permutes_forces(job_store, db, tmp_path):
    s = cu_structures(1, seed=12)[0]
    (first,), _, _ = _label([s], "p", job_store, tmp_path / "p")
    order = np.random.default_rng(0).permutation(len(s))
    permuted = Structure(s.lattice, [s[i].species for i in order], s.frac_coords[order])
    (second,), calls, _ = _label([permuted], "q", job_store, tmp_path / "q")
    assert calls == 0 and second.reused_from == first.label_id
    atoms = to_atoms(permuted)
    atoms.calc = EMT()
    np.testing.assert_allclose(second.forces, atoms.get_forces(), atol=1e-10)
    assert second.energy == pytest.approx(atoms.get_potential_energy())


def test_failed_labels_are_not_reused(job_store, db, tmp_path):
    s = cu_structures(1, seed=13)[0]
    spec = COUNTING_SPEC
    failed = LabelDoc(structure=s, oracle=spec.name, oracle_fingerprint=spec.fingerprint, status="failed",
                      reason="SCF did not converge", campaign="x")
    db.upsert("labels", [failed])
    (lab,), calls, _ = _label([s], "y", job_store, tmp_path / "y")
    assert calls >= 1 and lab.ok and lab.reused_from is None


def test_reuse_can_be_switched_off(job_store, db, tmp_path):
    s = cu_structures(1, seed=14)[0]
    _label([s], "m", job_store, tmp_path / "m")
    maker = AseOracleMaker(calculator=COUNTING_SPEC, reuse_labels=False)
    before = CountingEMT.calls
    run_locally(maker.make(s, campaign="n", iteration=0), store=job_store, log=False, ensure_success=True)
    assert CountingEMT.calls > before
