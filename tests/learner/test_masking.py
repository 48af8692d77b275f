"""Per-atom force weights and per-configuration energy weights in MACE training (NFT masking).

A label with weight 0 must have no influence at all: two trainings with the same seed on the same
configurations, whose masked labels differ, give the same model.
"""

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from almat.learner.mace import (
    ATOM_FORCE_WEIGHT_KEY,
    MaceHyperParameters,
    _loader,
    _loss,
    atoms_to_dataset,
    build_model,
    predict,
    train_mace,
)

HP = MaceHyperParameters(num_channels=8, epochs=4, batch_size=4, eval_every=2, radial_mlp=[16])


def _labelled(atoms):
    atoms.calc = EMT()
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
    return atoms


def _data(seed: int = 0):
    """4 full Cu8 cells (energy and all forces) and 6 Cu32 'chunks' (forces of two central atoms only)."""
    rng = np.random.default_rng(seed)
    full = []
    for _ in range(4):
        a = bulk("Cu", "fcc", a=3.61).repeat((2, 2, 2))
        a.positions += rng.normal(0, 0.08, a.positions.shape)
        full.append(_labelled(a))
    chunks, centres = [], []
    for _ in range(6):
        a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
        a.positions += rng.normal(0, 0.08, a.positions.shape)
        a = _labelled(a)
        centre = sorted(rng.choice(len(a), size=2, replace=False).tolist())
        w = np.zeros(len(a))
        w[centre] = 1.0
        a.arrays["force_weights"] = w
        a.info["energy_weight"] = 0.0
        chunks.append(a)
        centres.append(centre)
    return full, chunks, centres


def _with_labels(atoms, energy, forces):
    b = atoms.copy()  # keeps arrays["force_weights"] and info["energy_weight"]
    b.calc = SinglePointCalculator(b, energy=energy, forces=forces)
    return b


def _train(atoms_list, seed=7):
    ids = [f"c{i}" for i in range(len(atoms_list))]
    return train_mace(atoms_list, ids, HP, seed=seed)


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_masked_labels_have_no_influence_on_the_trained_model():
    full, chunks, centres = _data()
    rng = np.random.default_rng(42)
    scrambled = []
    for a, centre in zip(chunks, centres):
        forces = a.get_forces().copy()
        mask = np.ones(len(a), dtype=bool)
        mask[centre] = False
        forces[mask] = rng.normal(0, 5.0, size=(mask.sum(), 3))  # non-central forces: noise
        energy = float(rng.normal(0, 100.0))  # energy weight 0: any value
        scrambled.append(_with_labels(a, energy, forces))

    r1 = _train(full + chunks)
    r2 = _train(full + scrambled)
    p1, p2 = _params(r1.model), _params(r2.model)
    assert p1.keys() == p2.keys()
    for k in p1:
        torch.testing.assert_close(p1[k], p2[k], rtol=0, atol=1e-7, msg=lambda m, k=k: f"{k}: {m}")
    assert r1.metrics == pytest.approx(r2.metrics, rel=1e-6, abs=1e-9)
    test = [_labelled(bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1)))]
    test[0].positions += np.random.default_rng(3).normal(0, 0.1, test[0].positions.shape)
    e1, f1 = predict([r1.model], test)
    e2, f2 = predict([r2.model], test)
    np.testing.assert_allclose(e1, e2, rtol=0, atol=1e-6)
    np.testing.assert_allclose(f1[0], f2[0], rtol=0, atol=1e-6)

    # positive control: changing the force on one central atom does change the model
    changed = list(chunks)
    a, centre = chunks[0], centres[0]
    forces = a.get_forces().copy()
    forces[centre[0]] += np.array([1.0, -0.5, 0.5])
    changed[0] = _with_labels(a, a.get_potential_energy(), forces)
    r3 = _train(full + changed)
    p3 = _params(r3.model)
    assert any(not torch.allclose(p1[k], p3[k], rtol=0, atol=1e-6) for k in p1 if p1[k].is_floating_point())


def test_weighted_loss_counts_only_weighted_atoms_and_configurations():
    full, chunks, centres = _data(seed=1)
    data = atoms_to_dataset(full + chunks, [29], HP.r_max)
    assert all(d[ATOM_FORCE_WEIGHT_KEY] is not None for d in data)
    batch = next(iter(_loader(data, batch_size=len(data), shuffle=False)))
    # the per-node weights are batched along the nodes
    assert batch[ATOM_FORCE_WEIGHT_KEY].shape == (batch.num_nodes,)
    assert float(batch[ATOM_FORCE_WEIGHT_KEY].sum()) == pytest.approx(4 * 8 + 2 * 6)
    torch.manual_seed(0)
    model = build_model(HP, [29], data)
    out = model(batch.to_dict(), training=False, compute_force=True)
    loss = float(_loss(batch, out, HP).detach())

    # by hand: energy over the 4 full cells only, forces over the weighted atoms only
    de, df = [], []
    pf = out["forces"].detach().numpy()
    pe = out["energy"].detach().numpy()
    ptr = batch.ptr.numpy()
    for g, atoms in enumerate(full + chunks):
        w = atoms.arrays.get("force_weights", np.ones(len(atoms)))
        if atoms.info.get("energy_weight", 1.0) > 0:
            de.append(((atoms.get_potential_energy() - pe[g]) / len(atoms)) ** 2)
        err = pf[ptr[g]:ptr[g + 1]] - atoms.get_forces()
        df.extend(np.mean(err[w > 0] ** 2, axis=1))
    expected = HP.energy_weight * np.mean(de) + HP.forces_weight * np.mean(df)
    assert loss == pytest.approx(expected, rel=1e-4)


def test_unweighted_data_are_as_before_and_all_ones_weights_change_nothing():
    full, _, _ = _data(seed=2)
    plain = atoms_to_dataset(full, [29], HP.r_max)
    assert all(d[ATOM_FORCE_WEIGHT_KEY] is None for d in plain)
    assert all(float(d.energy_weight) == 1.0 for d in plain)
    ones = [a.copy() for a in full]
    for a, src in zip(ones, full):
        a.calc = SinglePointCalculator(a, energy=src.get_potential_energy(), forces=src.get_forces())
        a.arrays["force_weights"] = np.ones(len(a))
    weighted = atoms_to_dataset(ones, [29], HP.r_max)
    b_plain = next(iter(_loader(plain, batch_size=4, shuffle=False)))
    b_weighted = next(iter(_loader(weighted, batch_size=4, shuffle=False)))
    torch.manual_seed(0)
    model = build_model(HP, [29], plain)
    out = model(b_plain.to_dict(), training=False, compute_force=True)
    assert float(_loss(b_weighted, out, HP)) == pytest.approx(float(_loss(b_plain, out, HP)), rel=1e-6)


def test_bad_weights_are_rejected():
    full, _, _ = _data(seed=3)
    a = full[0]
    a.arrays["force_weights"] = -np.ones(len(a))
    with pytest.raises(ValueError, match="force_weights must be finite and >= 0"):
        atoms_to_dataset([a], [29], HP.r_max)
    del a.arrays["force_weights"]
    a.info["energy_weight"] = float("nan")
    with pytest.raises(ValueError, match="energy_weight must be finite"):
        atoms_to_dataset([a], [29], HP.r_max)
