"""Chunk cutting and uncertain-atom selection of nearsighted force training."""

import numpy as np
import pytest
from ase.build import bulk
from ase.neighborlist import neighbor_list

from almat.learner.committee import CommitteePrediction
from almat.sampler.chunks import (
    atomic_uncertainty,
    check_target_size,
    cut_chunk,
    cut_chunks,
    group_centres,
    select_uncertain_atoms,
)

CUTOFF = 4.5


@pytest.fixture(scope="module")
def target():
    """A rattled 108-atom Cu cell (10.83 Å cube) with a vacancy."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    del atoms[50]
    atoms.positions += np.random.default_rng(0).normal(0, 0.1, atoms.positions.shape)
    return atoms


def _target_neighbours(target, centre, cutoff):
    """Distances (and atom indices) from ``centre`` to every atom image within ``cutoff`` in the target."""
    i, j, d = neighbor_list("ijd", target, cutoff)
    sel = i == centre
    order = np.argsort(d[sel])
    return d[sel][order], j[sel][order]


def _chunk_neighbours(chunk, central, cutoff):
    i, j, d = neighbor_list("ijd", chunk.atoms, cutoff)
    sel = i == central
    order = np.argsort(d[sel])
    return d[sel][order], j[sel][order]


def _corner_atom(target):
    """The atom closest to a cell corner: its neighbourhood crosses the periodic boundaries."""
    frac = target.get_scaled_positions()
    return int(np.argmin(np.linalg.norm(np.minimum(frac, 1 - frac), axis=1)))


@pytest.mark.parametrize("mode", ["cluster", "periodic"])
def test_chunk_keeps_the_central_environment_exactly(target, mode):
    centre = _corner_atom(target)
    chunk = cut_chunk(target, [centre], CUTOFF, mode=mode, vacuum=6.0, cell=[10.0, 10.0, 10.0])
    assert chunk.central_chunk == [0] and chunk.central_target == [centre]
    assert chunk.atoms.pbc.all()
    assert len(chunk.atoms) < len(target)
    assert chunk.atoms.get_chemical_symbols() == [target.get_chemical_symbols()[i] for i in chunk.target_indices]
    d_target, j_target = _target_neighbours(target, centre, CUTOFF)
    d_chunk, j_chunk = _chunk_neighbours(chunk, 0, CUTOFF)
    # same neighbours within the cutoff, at the same distances (periodic boundaries of the target crossed)
    np.testing.assert_allclose(d_chunk, d_target, rtol=0, atol=1e-9)
    assert sorted(np.asarray(chunk.target_indices)[j_chunk].tolist()) == sorted(j_target.tolist())
    # the displacement vectors are preserved too (the environment is not just isotropically similar)
    _, _, D_t = neighbor_list("ijD", target, CUTOFF)
    _, _, D_c = neighbor_list("ijD", chunk.atoms, CUTOFF)
    i_t = neighbor_list("i", target, CUTOFF)
    i_c = neighbor_list("i", chunk.atoms, CUTOFF)
    key = lambda v: tuple(np.round(v, 6))  # noqa: E731
    assert sorted(map(key, D_t[i_t == centre])) == sorted(map(key, D_c[i_c == 0]))
    w = chunk.force_weights
    assert w[0] == 1.0 and w.sum() == 1.0
    if mode == "cluster":
        assert len(chunk.atoms) == 1 + len(d_target)  # only the cutoff sphere
        # images are separated by the vacuum
        pos = chunk.atoms.positions
        extent = pos.max(axis=0) - pos.min(axis=0)
        np.testing.assert_allclose(chunk.atoms.cell.lengths(), extent + 6.0)
    else:
        np.testing.assert_allclose(chunk.atoms.cell.lengths(), [10.0, 10.0, 10.0])
        # no atom pair closer than 0.7 x the shortest distance of the target across the seam
        d_all = chunk.atoms.get_all_distances(mic=True)[np.triu_indices(len(chunk.atoms), 1)]
        d_min_target = target.get_all_distances(mic=True)[np.triu_indices(len(target), 1)].min()
        assert d_all.min() >= 0.7 * d_min_target


def test_merged_chunk_keeps_every_central_environment(target):
    centre = _corner_atom(target)
    _, neighbours = _target_neighbours(target, centre, 2.8)  # a nearest neighbour, maybe across the boundary
    other = int(neighbours[0])
    chunk = cut_chunk(target, [centre, other], CUTOFF, mode="cluster", vacuum=6.0)
    assert chunk.central_chunk == [0, 1]
    np.testing.assert_array_equal(np.flatnonzero(chunk.force_weights), [0, 1])
    for k, c in enumerate([centre, other]):
        d_target, _ = _target_neighbours(target, c, CUTOFF)
        d_chunk, _ = _chunk_neighbours(chunk, k, CUTOFF)
        np.testing.assert_allclose(d_chunk, d_target, rtol=0, atol=1e-9)
    single = cut_chunk(target, [centre], CUTOFF)
    assert len(single.atoms) < len(chunk.atoms) < 2 * len(single.atoms)  # the union, not two copies


def test_selection_threshold_and_grouping(target):
    u = np.zeros(len(target))
    u[[3, 40, 41, 90]] = [0.5, 0.4, 0.3, 0.2]
    threshold, picked = select_uncertain_atoms(u, 97)
    assert threshold == pytest.approx(np.percentile(u, 97))
    assert picked == [i for i in [3, 40, 41, 90] if u[i] >= threshold]
    assert picked[0] == 3  # most uncertain first
    threshold, picked = select_uncertain_atoms(u, 100)
    assert picked == [3] and threshold == 0.5

    d = target.get_distance(40, 41, mic=True)
    groups = group_centres(target, [3, 40, 41, 90], max_chunks=2, merge_distance=d + 0.01)
    # 40 and 41 merge only if they are within merge_distance of each other (they are, by construction)
    assert len(groups.groups) <= 2
    assert sum(len(g) for g in groups.groups) + len(groups.skipped) == 4
    assert groups.groups[0][0] == 3
    one = group_centres(target, [3, 40, 41, 90], max_chunks=1, merge_distance=0.0)
    assert one.groups == [[3]] and one.skipped == [40, 41, 90]
    # periodic grouping: a second central atom joins only if its cutoff sphere still fits in the cell
    far = group_centres(target, [3, 40, 41, 90], max_chunks=4, merge_distance=100.0, mode="periodic",
                        cutoff=CUTOFF, cell=[10.0] * 3)
    assert all(len(g) == 1 for g in far.groups)  # margin 0.5 Å: nobody fits next to another centre

    threshold, uncertain, groups, chunks = cut_chunks(target, u, 97, CUTOFF, max_chunks=4)
    assert len(chunks) == len(groups.groups)
    assert [c.central_target for c in chunks] == groups.groups
    assert set(groups.central_atoms) | set(groups.skipped) == set(uncertain)


def test_bad_inputs_raise_clear_errors(target):
    small = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))  # 7.22 Å < 2 x 4.5 Å
    with pytest.raises(ValueError, match=r"smaller than the cutoff sphere.*7\.22 Å.*2 x cutoff = 9\.00 Å"):
        check_target_size(small, CUTOFF)
    with pytest.raises(ValueError, match="smaller than the cutoff sphere"):
        cut_chunk(small, [0], CUTOFF)
    with pytest.raises(ValueError, match=r"percentile must be within \[0, 100\]"):
        select_uncertain_atoms([0.1, 0.2], 101)
    with pytest.raises(ValueError, match=r"percentile must be within \[0, 100\]"):
        select_uncertain_atoms([0.1, 0.2], -1)
    with pytest.raises(ValueError, match="coefficient must be > 0"):
        atomic_uncertainty(None, target, coefficient=0)
    with pytest.raises(ValueError, match=r"each > 2 x cutoff"):
        cut_chunk(target, [0], CUTOFF, mode="periodic", cell=[8.0, 10.0, 10.0])
    with pytest.raises(ValueError, match="max_chunks must be >= 1"):
        group_centres(target, [0], max_chunks=0, merge_distance=1.0)
    with pytest.raises(ValueError, match="uncertainties for a target of"):
        cut_chunks(target, [0.1] * 5, 90, CUTOFF, 2)


def test_atomic_uncertainty_is_the_scaled_committee_force_std(target):
    rng = np.random.default_rng(1)
    forces = rng.normal(size=(3, len(target), 3))

    class StubCommittee:
        def predict(self, atoms_list):
            return CommitteePrediction(np.zeros((3, 1)), [forces])

    u = atomic_uncertainty(StubCommittee(), target, coefficient=2.0)
    expected = 2.0 * np.linalg.norm(np.std(forces, axis=0), axis=1)
    np.testing.assert_allclose(u, expected)
