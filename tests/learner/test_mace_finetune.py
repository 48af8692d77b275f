"""MACE fine-tuned from a local foundation ``.model`` file: naive and multihead with replay, reference
energies on a new oracle's scale, safe storage, and what a wrong foundation file gets.

The foundation is a small MACE model that the fixture trains on EMT Cu and CuAu and writes as mace does (a
whole pickled module). The campaign's "new oracle" is EMT with its energy zero moved by 1.5 eV/atom, as a
different DFT setting would move it.
"""

import pickle
import zipfile

import numpy as np
import pytest
import torch
from mace_foundation import emt_frames, write_foundation

from almat.learner.committee import Committee
from almat.learner.hyperparameters import MaceFinetuneHyperParameters
from almat.learner.mace import predict
from almat.learner.mace_finetune import (
    CAMPAIGN_HEAD,
    finetune_mace,
    foundation_elements,
    from_foundation,
    read_foundation,
    refit_reference_energies,
)
from almat.learner.models import model_from_bytes, model_to_bytes

SHIFT = 1.5  # eV/atom: the new oracle's energy zero


@pytest.fixture(scope="module")
def foundation(tmp_path_factory):
    """(foundation .model path, replay extxyz path): a small MACE trained on EMT Cu and CuAu."""
    return write_foundation(tmp_path_factory.mktemp("foundation"))


def errors(model, frames):
    """(energy error per atom, mean over frames; force RMSE) against the frames' labels."""
    e, f = predict([model], frames)
    de = [(e[0, i] - a.get_potential_energy()) / len(a) for i, a in enumerate(frames)]
    df = np.concatenate([(f[i][0] - a.get_forces()).ravel() for i, a in enumerate(frames)])
    return float(np.mean(de)), float(np.sqrt(np.mean(df ** 2)))


def hp(path, **kw):
    foundation = {"path": str(path), **kw.pop("foundation", {})}
    return MaceFinetuneHyperParameters(foundation=foundation, epochs=kw.pop("epochs", 8), **kw)


def test_foundation_elements_and_reference_energies_on_a_new_oracle(foundation):
    path, _ = foundation
    assert foundation_elements(path) == ["Cu", "Au"]
    labels, test = emt_frames(8, 3, shift=SHIFT), emt_frames(4, 4, shift=SHIFT)
    raw = read_foundation(path)
    assert errors(raw, test)[0] < -1.0  # the foundation's energy scale: more than 1 eV/atom off
    # the member keeps only the campaign's elements; the refit alone puts its energies on the new scale
    from almat.learner.mace import atoms_to_dataset

    torch.set_default_dtype(torch.float64)
    try:
        member = from_foundation(raw, [29], [CAMPAIGN_HEAD]).double()
        assert member.atomic_numbers.tolist() == [29]
        e0 = refit_reference_energies(member, atoms_to_dataset(labels, [29], float(member.r_max)), 0)
    finally:
        torch.set_default_dtype(torch.float32)
    raw_e0 = float(np.atleast_2d(raw.atomic_energies_fn.atomic_energies.numpy())[0][0])
    assert e0[0] - raw_e0 > 1.0
    assert abs(errors(member, test)[0]) < 0.1  # from more than 1 eV/atom off, by the refit alone
    # the same forces as the foundation before any training: the weights were carried over
    assert errors(member, test)[1] == pytest.approx(errors(raw, test)[1], rel=1e-4)


@pytest.mark.parametrize("mode", ["naive", "multihead"])
def test_finetuned_member_is_stored_safely_and_learns(foundation, mode):
    path, replay = foundation
    labels, test = emt_frames(10, 5, shift=SHIFT), emt_frames(4, 6, shift=SHIFT)
    before = errors(read_foundation(path), test)[1]
    settings = hp(path, foundation={"mode": mode, "replay": str(replay), "replay_samples": 6}, epochs=10)
    result = finetune_mace(labels, [f"l{i}" for i in range(len(labels))], settings, seed=1)
    model = result.model
    assert model.almat_architecture["class"] == "MACE" and model.heads == [CAMPAIGN_HEAD]  # pt head dropped
    assert model.atomic_numbers.tolist() == [29]
    e_err, f_rmse = errors(model, test)
    assert abs(e_err) < 0.1  # on the new oracle's scale
    assert f_rmse < before  # it learned from the labels
    # stored as a state dict + plain record, and reloaded with weights_only=True to the same predictions
    blob = model_to_bytes(model)
    payload = torch.load(__import__("io").BytesIO(blob), weights_only=True)
    assert isinstance(payload["architecture"]["kwargs"]["interaction_cls"], str)
    again = model_from_bytes(blob)
    e1, f1 = predict([model], test)
    e2, f2 = predict([again], test)
    np.testing.assert_allclose(e1, e2, rtol=0, atol=1e-9)
    np.testing.assert_allclose(f1[0], f2[0], rtol=0, atol=1e-9)


def test_members_with_different_seeds_disagree(foundation):
    """Bootstrap resampling: members fine-tuned from the same weights are not copies of each other."""
    path, _ = foundation
    labels, test = emt_frames(8, 7, shift=SHIFT), emt_frames(2, 8, shift=SHIFT)
    settings = hp(path, epochs=4)
    a = finetune_mace(labels, [str(i) for i in range(8)], settings, seed=1).model
    b = finetune_mace(labels, [str(i) for i in range(8)], settings, seed=2).model
    fa, fb = predict([a], test)[1][0][0], predict([b], test)[1][0][0]
    assert np.max(np.abs(fa - fb)) > 1e-3


def test_warm_start_continues_the_previous_member(foundation):
    path, _ = foundation
    labels = emt_frames(8, 9, shift=SHIFT)
    settings = hp(path, epochs=4, warm_start_epochs=2)
    first = finetune_mace(labels, [str(i) for i in range(8)], settings, seed=1)
    second = finetune_mace(labels, [str(i) for i in range(8)], settings, seed=2, init_model=first.model)
    assert second.epochs == 2 and second.model.almat_architecture["class"] == "MACE"


def test_wrong_foundation_files_are_refused_in_one_line(foundation, tmp_path):
    path, _ = foundation
    with pytest.raises(ValueError, match="foundation model file not found: .*nowhere.model"):
        read_foundation(tmp_path / "nowhere.model")
    text = tmp_path / "notes.model"
    text.write_text("not a model\n")
    with pytest.raises(ValueError, match=r"notes.model is not a MACE model \(not a torch archive\)"):
        read_foundation(text)
    state = tmp_path / "state_dict.model"  # a torch archive, but only a state dict
    torch.save(read_foundation(path).state_dict(), state)
    with pytest.raises(ValueError, match="is not a MACE model \\(it holds a OrderedDict\\)"):
        read_foundation(state)

    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    planted = tmp_path / "planted.model"
    torch.save({"model": Planted()}, planted)
    assert zipfile.is_zipfile(planted)
    with pytest.raises(ValueError, match=r"planted.model is not a MACE model: it would unpickle (posix|nt)\.system"):
        read_foundation(planted)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # (the planted file really is a pickle that runs code)
        torch.load(planted, weights_only=True)


def test_finetuning_on_stresses(foundation):
    """``stress_weight`` > 0: the fine-tuned member learns the labelled stresses (EMT's, over ±6 % strain)."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.units import GPa

    def with_stress(frames, seed):
        rng = np.random.default_rng(seed)
        for atoms in frames:
            atoms.set_cell(atoms.cell * (1 + rng.uniform(-0.06, 0.06)), scale_atoms=True)
            atoms.calc = EMT()
            results = dict(energy=atoms.get_potential_energy() + SHIFT * len(atoms), forces=atoms.get_forces(),
                           stress=atoms.get_stress())
            atoms.calc = SinglePointCalculator(atoms, **results)
        return frames

    path, _ = foundation
    labels, test = with_stress(emt_frames(12, 10), 0), with_stress(emt_frames(6, 11), 1)
    reference = np.array([a.get_stress() for a in test])
    rmse = {}
    for weight in (0.0, 1.0):
        settings = hp(path, epochs=10, lr=0.01, stress_weight=weight)  # 30 steps
        result = finetune_mace(labels, [str(i) for i in range(12)], settings, seed=1)
        assert ("stress_rmse_gpa" in result.metrics) == (weight > 0)
        model = result.model
        stresses = []
        for atoms in test:
            atoms = atoms.copy()
            atoms.calc = Committee([model, model]).calculator(stress=True)  # the mean of one model
            stresses.append(atoms.get_stress())
        rmse[weight] = float(np.sqrt(np.mean((np.array(stresses) - reference) ** 2))) / GPa
    assert rmse[1.0] < 0.5 * rmse[0.0], rmse
