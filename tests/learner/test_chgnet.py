"""CHGNet fine-tuned from its bundled weights on EMT labels: the refitted reference energies put it on the
new oracle's energy scale, fine-tuning lowers the force error, and it is stored and reloaded safely."""

import numpy as np
import pytest

pytest.importorskip("chgnet")

from almat.learner.chgnet import finetune_chgnet, predict_chgnet, pretrained_chgnet  # noqa: E402
from almat.learner.hyperparameters import ChgnetHyperParameters  # noqa: E402
from almat.learner.models import model_from_bytes, model_to_bytes  # noqa: E402


def _errors(models, frames):
    e, f, _ = predict_chgnet(models, frames)
    de = e[0] / np.array([len(a) for a in frames]) - np.array([a.get_potential_energy() / len(a) for a in frames])
    df = np.concatenate([f[i][0] - a.get_forces() for i, a in enumerate(frames)])
    return float(np.sqrt(np.mean(de ** 2))), float(np.sqrt(np.mean(df ** 2)))


@pytest.mark.slow
def test_finetuned_chgnet_learns_the_emt_scale_and_forces_and_round_trips(cu_data):
    train, test = cu_data
    train, test = train[:10], test[:4]
    e0, f0 = _errors([pretrained_chgnet()], test)
    assert e0 > 1.0  # EMT's Cu energies (about 0 eV/atom) are not on MPtrj's DFT scale (about -4 eV/atom)
    hp = ChgnetHyperParameters(epochs=4, batch_size=5)
    result = finetune_chgnet(train, [f"c{i}" for i in range(len(train))], hp, seed=0)
    e1, f1 = _errors([result.model], test)
    assert e1 < 0.02, e1  # the refitted AtomRef carries the new reference energies
    assert f1 < f0, (f0, f1)
    assert sorted(result.train_ids + result.valid_ids) == sorted(f"c{i}" for i in range(len(train)))
    again = model_from_bytes(model_to_bytes(result.model))
    np.testing.assert_allclose(predict_chgnet([again], test)[0], predict_chgnet([result.model], test)[0], rtol=1e-6)


def test_reference_energies_of_one_multi_element_composition_are_fitted_in_float64():
    """Every frame of a campaign on one cell has the same composition, so XᵀX has rank 1. chgnet's own
    ``AtomRef.fit`` (a float32 pinv) then put the argyrodite's references about 1,000 eV/atom off, and
    fine-tuning got worse with every label; ``refit_atom_ref`` solves it in float64."""
    from pathlib import Path

    import torch
    from ase.io import read

    from almat.learner.chgnet import crystal_graphs, refit_atom_ref
    from almat.oracle.xtb import xtb_spec

    pytest.importorskip("tblite")
    cif = sorted((Path(__file__).parents[1] / "test_data" / "structures").glob("Li6PS5Cl_enumerated_rank*.cif"))[0]
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(4):
        atoms = read(cif)
        atoms.rattle(0.05, seed=int(rng.integers(1000)))
        atoms.calc = xtb_spec().load()
        atoms.get_potential_energy()
        frames.append(atoms)
    model = pretrained_chgnet()
    graphs = crystal_graphs(model, frames)
    target = np.array([a.get_potential_energy() / len(a) for a in frames])  # GFN1-xTB: about -59 eV/atom
    with torch.no_grad():
        network = (model(graphs, task="e")["e"] - model.composition_model(graphs)).numpy()
    weights = refit_atom_ref(model.composition_model, graphs, target - network)
    assert np.all(np.isfinite(weights))
    e_err, _ = _errors([model], frames)
    assert e_err < 0.1  # eV/atom, on xTB's scale
