"""The DeePMD learner (deepmd-kit's TensorFlow backend): two tiny members trained with ``dp train`` on EMT Cu
frames predict finite energies, forces, stresses and descriptors and disagree; a member continues from another
(``--init-frz-model``); the stored form is data (JSON + arrays) that reloads to the same predictions, and
anything else is refused; bad hyperparameters and a missing extra are one line."""

import io
import pickle
import sys

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from emt_cu import emt_cu_atoms

from almat.learner.models import OWN_FORMAT, UnsafeModelError, model_from_bytes, model_to_bytes
from almat.learner.registry import hyperparameters_class, load_learner

HP = {"numb_steps": 150, "warm_start_steps": 40, "neuron": [8, 16], "axis_neuron": 4, "fitting_neuron": [16, 16],
      "rcut": 4.5, "rcut_smth": 2.0, "start_pref_v": 0.02, "limit_pref_v": 1.0}


def _frames(n: int, seed: int):
    """EMT Cu frames with energies, forces and stresses (so the virial enters the loss)."""
    from ase.calculators.emt import EMT

    out = []
    for atoms in emt_cu_atoms(n, seed=seed):
        atoms.calc = EMT()
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "stress": atoms.get_stress()}
        atoms.calc = SinglePointCalculator(atoms, **results)
        out.append(atoms)
    return out


@pytest.fixture(scope="module")
def trained():
    pytest.importorskip("deepmd")
    from almat.learner.committee import Committee

    learner = load_learner("deepmd")
    train, test = _frames(10, seed=0), _frames(3, seed=1)
    ids = [f"l{i}" for i in range(len(train))]
    results = [learner.train(train, ids, HP, seed=seed) for seed in (0, 1)]
    return learner, Committee([r.model for r in results]), results, train, test


@pytest.mark.slow
def test_a_committee_of_two_trained_members_predicts_and_disagrees(trained):
    learner, committee, results, train, test = trained
    assert committee.elements == ["Cu"] and committee.n_members == 2
    for r in results:
        assert sorted(r.train_ids + r.valid_ids) == sorted(f"l{i}" for i in range(len(train))) and r.valid_ids
        assert r.epochs == HP["numb_steps"] and r.n_parameters > 100 and r.history
        assert np.isfinite(r.metrics["force_rmse"]) and np.isfinite(r.metrics["energy_rmse_per_atom"])
    pred = committee.evaluate(test, compute_stress=True)
    assert pred.energies.shape == (2, 3) and pred.stresses.shape == (2, 3, 6)
    assert all(f.shape == (2, len(a), 3) for f, a in zip(pred.forces, test))
    assert np.isfinite(pred.energies).all() and all(np.isfinite(f).all() for f in pred.forces)
    assert (pred.model_deviation > 0).all()  # two seeds, two models
    # frames go together where they can: the same numbers one frame at a time
    one = committee.learner.predict(committee, test[:1], stress=True)
    np.testing.assert_allclose(one.energies[:, 0], pred.energies[:, 0], rtol=1e-10)
    np.testing.assert_allclose(one.stresses[:, 0], pred.stresses[:, 0], rtol=1e-8, atol=1e-12)
    # forces are minus the energy's gradient (a finite difference of member 0)
    atoms, h = test[0].copy(), 1e-4
    shifted = [atoms.copy() for _ in range(2)]
    shifted[0].positions[0, 0] += h
    shifted[1].positions[0, 0] -= h
    e = learner.predict(committee, shifted).energies[0]
    assert abs(-(e[0] - e[1]) / (2 * h) - pred.forces[0][0, 0, 0]) < 1e-4
    desc = learner.descriptors(committee.models[0], test)
    assert [d.shape for d in desc] == [(len(a), learner.descriptor_size(committee.models[0])) for a in test]


@pytest.mark.slow
def test_a_member_continues_from_a_previous_one(trained):
    learner, committee, results, train, test = trained
    ids = [f"l{i}" for i in range(len(train))]
    warm = learner.train(train, ids, HP, seed=5, init_model=committee.models[0])
    assert warm.epochs == HP["warm_start_steps"]
    assert warm.model.sel == committee.models[0].sel  # its sel is the previous member's, not recounted
    before = learner.predict(type(committee)([committee.models[0], warm.model]), test)
    # it starts from member 0's weights: closer to member 0 than member 1 is
    assert np.abs(before.energies[1] - before.energies[0]).max() < np.abs(
        committee.predict(test).energies[1] - committee.predict(test).energies[0]).max()


@pytest.mark.slow
def test_stored_models_are_data_and_reload_to_the_same_predictions(trained):
    from almat.learner import models as stored
    from almat.learner.committee import Committee
    from almat.learner.deepmd import MAGIC, unpack

    learner, committee, results, train, test = trained
    blob = model_to_bytes(committee.models[0])
    assert blob.startswith(OWN_FORMAT + b"DeePMD\n" + MAGIC)
    tree = unpack(blob[len(OWN_FORMAT + b"DeePMD\n"):])
    assert tree["model_def_script"]["descriptor"]["type"] == "se_e2_a"  # the model's input JSON, with its weights
    stored._BUILT.clear()  # rebuild from the bytes, not from this process's cache
    again = model_from_bytes(blob)
    assert again is not committee.models[0]
    np.testing.assert_allclose(Committee([again, committee.models[1]]).predict(test).energies,
                               committee.predict(test).energies, rtol=1e-10)
    # the frozen graph LAMMPS reads (almat export-model) is a TensorFlow GraphDef with deepmd's nodes
    graph = learner.frozen_model(again)
    assert b"o_energy" in graph and b"model_type" in graph


def test_foreign_or_planted_files_are_refused():
    pytest.importorskip("deepmd")
    from almat.learner.deepmd import MAGIC, pack, unpack

    class Planted:
        def __reduce__(self):
            return (print, ("planted code ran",))

    head = OWN_FORMAT + b"DeePMD\n"
    buffer = io.BytesIO()
    np.save(buffer, np.array([Planted()], dtype=object), allow_pickle=True)
    planted_npz = io.BytesIO()
    np.savez(planted_npz, __json__=np.frombuffer(b"{}", dtype=np.uint8), a0=np.array([Planted()], dtype=object))
    for blob, why in [(head + pickle.dumps(Planted()), "expected it to start with"),
                      (head + MAGIC + planted_npz.getvalue(), "Object arrays cannot be loaded"),
                      (head + MAGIC + b"not an npz", "pickled"),  # np.load would unpickle it: refused
                      (head + pack({"model": {"@class": "Model", "type_map": ["Cu"]}})[:], "model_def_script"),
                      (head + pack({"model": {"@class": "Model", "type_map": ["Xx"]}, "model_def_script": {}}),
                       "bad type_map"),
                      (OWN_FORMAT + b"NoSuchClass\n" + MAGIC, "no registered learner builds 'NoSuchClass'"),
                      (OWN_FORMAT + b"ScaleShiftMACE\n" + MAGIC, "stores its models as torch state dicts")]:
        with pytest.raises(UnsafeModelError, match=why):
            model_from_bytes(blob)
    tree = {"model": {"@class": "Model", "type_map": ["Cu"], "w": np.arange(3.0)}, "model_def_script": {"a": None}}
    back = unpack(pack(tree))
    np.testing.assert_array_equal(back["model"]["w"], np.arange(3.0))
    assert back["model_def_script"] == {"a": None}


def test_unknown_or_inconsistent_hyperparameters_are_one_line():
    cls = hyperparameters_class("deepmd")
    from almat.learner.base import Learner

    class Check(Learner):
        kind, hyperparameters = "deepmd", cls

    with pytest.raises(ValueError, match=r"^hyperparameters.epochs: unknown key; valid: descriptor, rcut, rcut_smth, "
                                         r"sel, neuron, .*numb_steps"):
        Check().validate({"epochs": 3})
    with pytest.raises(ValueError, match=r"rcut_smth \(6.0\) must be below rcut \(5.0\)"):
        Check().validate({"rcut_smth": 6.0})
    with pytest.raises(ValueError, match=r"hyperparameters.descriptor: Input should be 'se_e2_a'"):
        Check().validate({"descriptor": "dpa3"})


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepmd", None)  # as if deepmd-kit were not installed
    monkeypatch.delitem(sys.modules, "almat.learner.deepmd", raising=False)
    with pytest.raises(ValueError, match=r"^learner deepmd needs deepmd, which is not installed: "
                                         r"pip install almat\[deepmd\]$"):
        load_learner("deepmd")
