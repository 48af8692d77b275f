import numpy as np
import pytest
import torch
from ase.build import bulk
from scipy.spatial.distance import cdist

from almat.learner.descriptors import atomic_descriptors, invariant_indices, structure_descriptors
from almat.schemas import to_structure


def _cu(strain=0.0, rattle=0.0, seed=0):
    atoms = bulk("Cu", "fcc", a=3.61).repeat((2, 2, 2))
    atoms.set_cell(atoms.cell * (1 + strain), scale_atoms=True)
    atoms.positions += np.random.default_rng(seed).normal(0, rattle, size=atoms.positions.shape)
    return atoms


def test_near_duplicates_are_close_and_strains_far(tiny_committee):
    committee, _ = tiny_committee
    rattled = [_cu(0.0, 0.005, seed) for seed in range(4)]  # thermal-noise copies of one cell
    strained = [_cu(s, 0.005, 10 + i) for i, s in enumerate((-0.03, 0.03))]
    d = structure_descriptors(committee, rattled + strained)
    assert d.shape == (6, len(invariant_indices(committee.models[0])))
    dist = cdist(d, d)
    dup = dist[:4, :4][np.triu_indices(4, 1)]
    to_strained = dist[:4, 4:]
    assert dup.max() < 0.05 * to_strained.min(), (dup.max(), to_strained.min())
    assert dist[4, 5] > to_strained.min()  # -3% and +3% are farther apart than either is from 0%


def test_descriptors_are_invariant_and_batch_independent(tiny_committee, cu_data):
    committee, _ = tiny_committee
    atoms = cu_data[0][3]
    moved = atoms.copy()
    moved.rotate(37, "x", rotate_cell=True)
    moved.rotate(-71, "z", rotate_cell=True)
    moved.translate([0.4, -0.2, 1.1])
    moved.wrap()
    perm = np.random.default_rng(0).permutation(len(atoms))
    moved = moved[perm]
    a0, a1 = atomic_descriptors(committee, [atoms, moved])
    assert a0.shape == (len(atoms), a1.shape[1])
    np.testing.assert_allclose(a0[perm], a1, atol=2e-5)
    # one-by-one equals batched; mean over atoms; Structures and Atoms give the same
    frames = cu_data[1]
    batched = structure_descriptors(committee, frames, batch_size=8)
    single = structure_descriptors(committee, [to_structure(a) for a in frames], batch_size=1)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(batched[2], atomic_descriptors(committee, [frames[2]])[0].mean(axis=0), atol=1e-6)
    # a different member gives a different feature space
    assert not np.allclose(structure_descriptors(committee, frames, member=1), batched)


def test_unknown_elements_and_empty_input(tiny_committee):
    committee, _ = tiny_committee
    with pytest.raises(ValueError, match="not trained on Al"):
        structure_descriptors(committee, [bulk("Al", "fcc", a=4.05)])
    assert structure_descriptors(committee, []).shape == (0, len(invariant_indices(committee.models[0])))
    with pytest.raises(IndexError):
        structure_descriptors(committee, [_cu()], member=5)


def test_invariant_columns_with_equivariant_features(cu_data):
    """max_L = 1: node features carry 1o channels; only the 0e ones are kept, as extract_invariant does."""
    from mace.modules.utils import extract_invariant

    from almat.learner.mace import MaceHyperParameters, atoms_to_dataset, build_model

    train = cu_data[0][:6]
    hp = MaceHyperParameters(num_channels=4, max_L=1, num_interactions=2, mlp_irreps="4x0e")
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        model = build_model(hp, [29], atoms_to_dataset(train, [29], hp.r_max)).eval()
    finally:
        torch.set_default_dtype(previous)
    cols = invariant_indices(model)
    # layer 1: 4x0e + 4x1o (16 columns, scalars first); layer 2 (last): 4x0e only
    np.testing.assert_array_equal(cols, [0, 1, 2, 3, 16, 17, 18, 19])
    np.testing.assert_array_equal(invariant_indices(model, num_layers=1), [0, 1, 2, 3])
    with pytest.raises(ValueError):
        invariant_indices(model, num_layers=3)

    from mace.tools.torch_geometric import DataLoader

    batch = next(iter(DataLoader(atoms_to_dataset(train[:2], [29], hp.r_max, with_labels=False), batch_size=2)))
    feats = model(batch.to_dict(), training=False)["node_feats"].detach()
    reference = extract_invariant(feats, num_layers=2, num_features=4, l_max=1).numpy()
    ours = np.concatenate(atomic_descriptors(model, train[:2]))
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    # and they are rotation invariant although the 1o channels are not
    rotated = train[0].copy()
    rotated.rotate(50, "y", rotate_cell=True)
    np.testing.assert_allclose(atomic_descriptors(model, [rotated])[0], ours[: len(rotated)], atol=2e-5)
