"""The classic committee evaluated in one vmapped pass gives the per-model loop's numbers."""

import numpy as np
import pytest
import torch

from almat.learner.batched import graph_energies, out_of_place_scatter, stackable
from almat.learner.committee import Committee
from almat.learner.hyperparameters import MaceHyperParameters
from almat.learner.mace import mace_architecture, model_inputs
from almat.learner.models import model_from_architecture
from emt_cu import emt_cu_atoms


def _compare(a, b, atol):
    assert np.allclose(a.energies, b.energies, atol=atol, rtol=0)
    assert all(np.allclose(x, y, atol=atol, rtol=0) for x, y in zip(a.forces, b.forces))
    if a.stresses is not None:
        assert np.allclose(a.stresses, b.stresses, atol=atol, rtol=0)


def test_batched_evaluation_equals_the_loop(tiny_committee, cu_data):
    committee, _ = tiny_committee
    frames = cu_data[1][:3] + emt_cu_atoms(2, seed=9, repeat=(1, 1, 2), cubic=True)  # different sizes in one batch
    loop = Committee(committee.models, batched=False).evaluate(frames, compute_stress=True)
    fused = Committee(committee.models, batched=True)
    one_pass = fused.evaluate(frames, compute_stress=True)
    assert fused.batched  # it did not fall back
    assert one_pass.energies.shape == (2, 5) and one_pass.stresses.shape == (2, 5, 6)
    _compare(loop, one_pass, atol=1e-4)
    assert np.abs(one_pass.stresses).max() > 1e-4  # stresses that are not trivially zero agree


def test_batched_evaluation_equals_the_loop_in_float64():
    """Members fitted on different splits differ in E0s, scale, shift (buffers, stacked) and in their average
    number of neighbours (a plain attribute, folded into the weights it divides)."""
    hp = MaceHyperParameters(num_channels=8, dtype="float64", max_L=1)
    torch.manual_seed(0)
    models = [model_from_architecture(mace_architecture(hp, [29], [e0], avg, scale, 0.05)).eval()
              for e0, avg, scale in ((-0.3, 10.0, 0.7), (-0.2, 12.5, 0.9), (-0.4, 9.0, 1.1))]
    assert stackable(models)
    frames = emt_cu_atoms(3, seed=4)
    loop = Committee(models, batched=False).evaluate(frames, compute_stress=True)
    _compare(loop, Committee(models, batched=True).evaluate(frames, compute_stress=True), atol=1e-10)


def test_members_that_do_not_stack_fall_back_to_the_loop(cu_data):
    torch.manual_seed(1)
    models = [model_from_architecture(mace_architecture(MaceHyperParameters(num_channels=c), [29], [-0.3], 10.0,
                                                        1.0, 0.0)).eval() for c in (8, 16)]
    assert not stackable(models)
    committee = Committee(models, batched=True)
    frames = cu_data[1][:2]
    out = committee.evaluate(frames)
    assert not committee.batched  # measured once, then the loop
    _compare(Committee(models, batched=False).evaluate(frames), out, atol=0)


def test_the_default_batches_small_frames_on_the_cpu_and_falls_back_once(cu_data):
    from almat.learner.mace import CPU_BATCH_MAX_ATOMS

    torch.manual_seed(1)
    models = [model_from_architecture(mace_architecture(MaceHyperParameters(num_channels=c), [29], [-0.3], 10.0,
                                                        1.0, 0.0)).eval() for c in (8, 16)]
    committee = Committee(models)  # batched=None: by size on the CPU
    big = cu_data[1][:4]
    assert sum(len(a) for a in big) > CPU_BATCH_MAX_ATOMS
    committee.evaluate(big)
    assert committee.batched is None  # a big batch: the loop, nothing tried
    committee.evaluate(cu_data[1][:1])  # 8 atoms: one pass is tried; these members do not stack
    assert committee.batched is False


def test_energy_function_equals_mace_forward_and_mace_gets_its_scatter_back(tiny_committee, cu_data):
    import mace.modules.blocks as blocks

    from mace.tools.torch_geometric import Batch

    model = tiny_committee[0].models[0]
    batch = Batch.from_data_list(model_inputs([model], cu_data[1][:2]))
    reference = model(batch.to_dict(), compute_force=False)["energy"].detach()
    original = blocks.scatter_sum
    with pytest.raises(RuntimeError, match="inside"):
        with out_of_place_scatter():
            assert blocks.scatter_sum is not original
            energy = graph_energies(model, batch.to_dict(), batch.positions)[:, 0].detach()
            assert torch.allclose(energy, reference, atol=1e-5)
            raise RuntimeError("inside")
    assert blocks.scatter_sum is original
