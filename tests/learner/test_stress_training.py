"""Training on stresses (``hyperparameters.stress_weight``): the dataset carries them, the loss adds them in
GPa², and a model trained with them gets the equation of state of EMT copper much closer than one trained on
energies and forces alone."""

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import GPa

from almat.campaign.config import LearnerSettings
from almat.learner.hyperparameters import MaceHyperParameters
from almat.learner.mace import EV_PER_A3_IN_GPA, _energy_forces_loss, _loader, _loss, atoms_to_dataset, train_mace


def _emt_strained(n: int, seed: int, max_strain: float = 0.06):
    """Cu8 cells strained isotropically by up to ``max_strain`` and rattled, with EMT energy, forces, stress."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
        atoms.set_cell(atoms.cell * (1 + rng.uniform(-max_strain, max_strain)), scale_atoms=True)
        atoms.positions += rng.normal(0, 0.03, atoms.positions.shape)
        atoms.calc = EMT()
        results = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces(), stress=atoms.get_stress())
        atoms.calc = SinglePointCalculator(atoms, **results)
        out.append(atoms)
    return out


def _molecule_label():
    atoms = molecule("CO")
    atoms.calc = EMT()
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
    return atoms


def test_dataset_carries_labelled_stresses_and_weights_the_others_zero():
    cells = _emt_strained(2, seed=0)
    no_stress = cells[1].copy()
    no_stress.calc = SinglePointCalculator(no_stress, energy=cells[1].get_potential_energy(),
                                           forces=cells[1].get_forces())
    data = atoms_to_dataset([cells[0], no_stress, _molecule_label()], [6, 8, 29], r_max=4.0)
    assert [float(d.stress_weight) for d in data] == [1.0, 0.0, 0.0]
    voigt = cells[0].get_stress()  # xx yy zz yz xz xy
    matrix = data[0].stress[0].numpy()
    np.testing.assert_allclose(np.diag(matrix), voigt[:3], rtol=1e-5)
    np.testing.assert_allclose([matrix[1, 2], matrix[0, 2], matrix[0, 1]], voigt[3:], rtol=1e-5, atol=1e-9)


def test_loss_adds_the_stress_error_in_gpa_squared_of_the_labelled_configurations_only():
    cells = _emt_strained(3, seed=1)
    cells[2].calc.results.pop("stress")
    hp = MaceHyperParameters(stress_weight=0.5, epochs=1, batch_size=3)
    result = train_mace(cells, ["a", "b", "c"], hp.model_copy(update={"valid_fraction": 0.0}), seed=0)
    data = atoms_to_dataset(cells, [29], r_max=hp.r_max)
    batch = next(iter(_loader(data, 3, shuffle=False)))
    out = result.model(batch.to_dict(), training=False, compute_force=True, compute_stress=True)
    predicted = out["stress"].detach().numpy()
    by_hand = np.mean([np.mean((_matrix(cells[i].get_stress()) - predicted[i]) ** 2)
                       for i in range(2)]) * EV_PER_A3_IN_GPA ** 2
    expected = float(_energy_forces_loss(batch, out, hp)) + 0.5 * by_hand
    assert float(_loss(batch, out, hp)) == pytest.approx(expected, rel=1e-4)
    assert float(_loss(batch, out, hp.model_copy(update={"stress_weight": 0.0}))) == pytest.approx(
        float(_energy_forces_loss(batch, out, hp)), rel=1e-6)


def _matrix(voigt):
    xx, yy, zz, yz, xz, xy = voigt
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def test_stress_training_gets_the_equation_of_state():
    train = _emt_strained(24, seed=2)
    held_out = _emt_strained(12, seed=3)
    ids = [str(i) for i in range(len(train))]
    errors = {}
    for weight in (0.0, 1.0):
        hp = MaceHyperParameters(stress_weight=weight, epochs=40, batch_size=4, num_channels=8)
        model = train_mace(train, ids, hp, seed=0).model
        if weight:
            assert "stress_rmse_gpa" in train_mace(train[:4], ids[:4], hp.model_copy(update={"epochs": 1}),
                                                   seed=0).metrics
        data = atoms_to_dataset(held_out, [29], r_max=hp.r_max)
        batch = next(iter(_loader(data, len(held_out), shuffle=False)))
        with torch.enable_grad():
            out = model(batch.to_dict(), training=False, compute_force=True, compute_stress=True)
        predicted = out["stress"].detach().numpy()
        reference = np.array([_matrix(a.get_stress()) for a in held_out])
        errors[weight] = float(np.sqrt(np.mean((predicted - reference) ** 2))) / GPa
    # EMT's pressures over +-6 % strain span about +-10 GPa; forces alone leave them loose
    assert errors[1.0] < 0.5 * errors[0.0], errors


def test_shallow_ensembles_refuse_a_stress_weight():
    with pytest.raises(ValueError, match="stress_weight.*committee"):
        LearnerSettings(uncertainty="shallow", hyperparameters={"stress_weight": 1.0})
