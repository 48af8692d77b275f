"""The shallow ensemble: one MACE backbone, N readout heads, a committee of N to the rest of almat."""

import io

import numpy as np
import pytest
import torch
from jobflow import run_locally

from almat.learner.batched import graph_energies
from almat.learner.committee import Committee
from almat.learner.hyperparameters import MaceHyperParameters
from almat.learner.jobs import TrainCommitteeMaker, check_uncertainty
from almat.learner.mace import mace_architecture, model_inputs
from almat.learner.models import model_from_architecture, model_from_bytes, model_to_bytes
from almat.learner.shallow import (bootstrap_weights, head_count, head_outputs, mean_outputs, shallow_architecture,
                                   train_shallow_mace)
from almat.oracle import CalculatorSpec, label_with_calculator
from almat.schemas import ModelDoc, to_structure

HP = MaceHyperParameters(num_channels=8, epochs=12, warm_start_epochs=4, batch_size=6, eval_every=4)


def _batch(model, frames):
    from mace.tools.torch_geometric import Batch

    return Batch.from_data_list(model_inputs([model], frames))


@pytest.fixture(scope="module")
def fresh_shallow():
    """An untrained float64 shallow ensemble of 3 heads (its heads differ by their own initialisation)."""
    hp = MaceHyperParameters(num_channels=8, dtype="float64")
    torch.manual_seed(3)
    return model_from_architecture(shallow_architecture(mace_architecture(hp, [29], [-0.2], 12.0, 0.8, 0.1), 3))


@pytest.fixture(scope="module")
def trained_shallow(cu_data):
    train, _ = cu_data
    return train_shallow_mace(train, [f"c{i}" for i in range(len(train))], HP, seed=0, n_heads=4)


def test_each_head_has_its_own_energy_and_forces_that_are_its_gradient(fresh_shallow, cu_data):
    frames = cu_data[1][:3]
    batch = _batch(fresh_shallow, frames)
    out = head_outputs(fresh_shallow, batch.to_dict(), compute_stress=True)  # one backward per head (CPU)
    assert out["energy"].shape == (3, 3) and out["forces"].shape == (3, 24, 3) and out["stress"].shape == (3, 3, 3, 3)
    assert torch.all(out["energy"].std(dim=0) > 0) and torch.all(out["forces"].std(dim=0).abs().sum() > 0)
    # one backward batched over the heads (the accelerator's path) and the training path give the same forces
    fused = head_outputs(fresh_shallow, batch.to_dict(), compute_stress=True, batched=True)
    assert torch.allclose(fused["forces"], out["forces"], atol=1e-10)
    assert torch.allclose(fused["stress"], out["stress"], atol=1e-10)
    looped = head_outputs(fresh_shallow, batch.to_dict(), create_graph=True)
    assert torch.allclose(looped["forces"], out["forces"], atol=1e-10)
    # forces are minus the derivative of the head's own energy: a finite difference on one coordinate
    data, h, atom, axis, step = batch.to_dict(), 1, 5, 2, 1e-5
    energies = []
    for sign in (1, -1):
        pos = data["positions"].detach().clone()
        pos[atom, axis] += sign * step
        energies.append(float(graph_energies(fresh_shallow, data, pos, n_heads=3)[0, h].detach()))
    fd = -(energies[0] - energies[1]) / (2 * step)
    assert abs(fd - float(out["forces"][h, atom, axis])) < 1e-6
    # the mean at one model's cost is the mean of the heads
    mean = mean_outputs(fresh_shallow, batch.to_dict(), compute_stress=True)
    assert torch.allclose(mean["forces"], out["forces"].mean(dim=0), atol=1e-10)
    assert torch.allclose(mean["stress"], out["stress"].mean(dim=0), atol=1e-10)
    # and the module's own forward gives the mean too, never one head
    fwd = fresh_shallow(batch.to_dict(), compute_force=True)
    assert torch.allclose(fwd["energy"], out["energy"].mean(dim=0)) and torch.equal(fwd["energies"], out["energy"])


def test_heads_are_independent_readouts_on_a_shared_backbone(fresh_shallow, cu_data):
    frames = cu_data[1][:2]
    data = _batch(fresh_shallow, frames).to_dict()
    before = head_outputs(fresh_shallow, data)["energy"].detach()
    changed = model_from_bytes(model_to_bytes(fresh_shallow))
    last = changed.readouts[-1]
    m = last.linear_1.weight.numel() // 3  # head-major blocks of hidden units: head 2 owns the last block
    with torch.no_grad():
        last.linear_2.weight[2 * (last.linear_2.weight.numel() // 3):] += 0.5
    after = head_outputs(changed, data)["energy"].detach()
    assert m > 0 and torch.allclose(after[:2], before[:2]) and not torch.allclose(after[2], before[2])


def test_bootstrap_weights_are_one_resample_per_head():
    w = bootstrap_weights(20, 4, np.random.default_rng(0))
    assert w.shape == (20, 4) and np.all(w.sum(axis=0) == 20) and np.all(w >= 0)
    assert len({tuple(col) for col in w.T}) == 4 and np.all((w == 0).sum(axis=0) > 0)  # each head leaves some out


def test_training_learns_emt_forces_with_a_spread_between_heads(trained_shallow, cu_data):
    train, held_out = cu_data
    baseline = float(np.sqrt(np.mean([np.mean(a.get_forces() ** 2) for a in held_out])))
    committee = Committee([trained_shallow.model])
    assert committee.n_members == 4 and committee.shallow and committee.model_ids == ["0"]
    pred = committee.predict(held_out)
    assert pred.energies.shape == (4, len(held_out)) and pred.forces[0].shape == (4, 8, 3)
    mean_f = np.concatenate([pred.mean_forces(i) for i in range(len(held_out))])
    ref = np.concatenate([a.get_forces() for a in held_out])
    assert np.sqrt(np.mean((mean_f - ref) ** 2)) < 0.5 * baseline
    assert np.all(pred.model_deviation > 0) and trained_shallow.metrics["head_force_spread"] > 0
    assert set(trained_shallow.train_ids).isdisjoint(trained_shallow.valid_ids)
    assert trained_shallow.history[-1]["epoch"] == HP.epochs


def test_stored_as_state_dict_and_record_and_predicts_identically(trained_shallow, cu_data):
    model = trained_shallow.model
    blob = model_to_bytes(model)
    payload = torch.load(io.BytesIO(blob), weights_only=True)
    record = payload["architecture"]
    assert record["class"] == "ShallowEnsembleMACE" and record["kwargs"]["n_heads"] == 4
    again = model_from_bytes(blob)
    assert head_count(again) == 4
    frames = cu_data[1][:3]
    a = Committee([model]).evaluate(frames, compute_stress=True)
    b = Committee([again]).evaluate(frames, compute_stress=True)
    assert np.array_equal(a.energies, b.energies) and all(np.array_equal(x, y) for x, y in zip(a.forces, b.forces))
    assert a.stresses.shape == (4, 3, 6)


def test_evaluate_and_predict_agree_and_the_mean_only_call_skips_deviations(trained_shallow, cu_data):
    committee, frames = Committee([trained_shallow.model]), cu_data[1][:4]
    full, batched = committee.evaluate(frames), committee.predict(frames, batch_size=3)
    assert np.allclose(full.energies, batched.energies, atol=1e-5)
    mean = committee.evaluate(frames, deviation=False)
    assert mean.energies.shape == (1, 4) and not mean.with_deviation
    assert np.allclose(mean.mean_forces(2), full.mean_forces(2), atol=1e-5)
    results = mean.results(0)
    assert "model_deviation" not in results and "model_deviation" in full.results(0)


def test_warm_start_continues_with_the_heads(trained_shallow, cu_data):
    train, _ = cu_data
    ids = [f"c{i}" for i in range(len(train))]
    warm = train_shallow_mace(train, ids, HP, seed=1, init_model=trained_shallow.model, n_heads=4)
    assert warm.epochs == HP.warm_start_epochs
    other = train_shallow_mace(train[:8], ids[:8], HP.model_copy(update={"epochs": 2}), seed=1,
                               init_model=trained_shallow.model, n_heads=3)  # other heads: from scratch
    assert other.epochs == 2 and head_count(other.model) == 3


def test_bad_settings_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"at least 2 heads, got n_heads=1"):
        check_uncertainty("shallow", "mace", 1)
    with pytest.raises(ValueError, match=r"uncertainty: shallow needs a learner that can have heads \(mace\); "
                                         r"chgnet-finetune cannot"):
        TrainCommitteeMaker(learner="chgnet-finetune", uncertainty="shallow")
    with pytest.raises(ValueError, match=r"unknown uncertainty 'bayes'; valid: committee, shallow"):
        TrainCommitteeMaker(uncertainty="bayes")
    with pytest.raises(ValueError, match="a committee needs at least 2 models"):
        Committee([model_from_architecture(mace_architecture(MaceHyperParameters(num_channels=4), [29], [0.0], 10.0,
                                                             1.0, 0.0))])


def test_job_trains_one_model_and_keeps_the_previous_committee_when_training_diverges(job_store, db, cu_data):
    train, _ = cu_data
    spec = CalculatorSpec("ase.calculators.emt", "EMT")
    labels = [label_with_calculator(to_structure(a), spec, campaign="c", iteration=-1) for a in train[:10]]
    db.upsert("labels", labels)
    ids = [lab.label_id for lab in labels]
    hp = {"num_channels": 8, "epochs": 3, "batch_size": 5}
    job = TrainCommitteeMaker(uncertainty="shallow", n_heads=3, hyperparameters=hp).make(ids, campaign="c", iteration=0)
    out = run_locally(job, store=job_store, log=False, ensure_success=True)[job.uuid][1].output
    assert len(out.model_ids) == 1 and not out.reused_previous
    doc = ModelDoc.from_store(db.models.query_one({"model_id": out.model_ids[0]}))
    assert doc.architecture == "ShallowEnsembleMACE" and doc.hyperparameters["n_heads"] == 3
    committee = Committee.from_store(db, out.model_ids)
    assert committee.n_members == 3 and committee.predict([train[0]]).forces[0].shape == (3, 8, 3)
    # an absurd learning rate makes the loss non-finite: the iteration keeps the previous committee, says why
    bad = TrainCommitteeMaker(uncertainty="shallow", n_heads=3, warm_start=False,
                              hyperparameters={**hp, "lr": 1e30})
    job = bad.make(ids, campaign="c", iteration=1, previous_model_ids=out.model_ids)
    again = run_locally(job, store=job_store, log=False, ensure_success=True)[job.uuid][1].output
    assert again.reused_previous and again.model_ids == out.model_ids
    assert len(again.failed_members) == 1 and "diverged" in again.failed_members[0]
    assert db.models.count({"iteration": 1}) == 0
    # without a previous committee the job fails, with the reason
    job = bad.make(ids, campaign="c", iteration=2)
    with pytest.raises(ValueError, match=r"^the shallow ensemble's training failed and there is no previous "
                                         r"committee: training diverged at epoch \d+ "
                                         r"\(loss (nan|-?inf)\)$"):
        run_locally(job, store=job_store, log=False, raise_immediately=True)


def test_nll_fine_tuning_lowers_the_likelihood_loss_and_keeps_a_finite_spread(cu_data):
    """``nll_epochs``: after the same bootstrap training (same seed), a few epochs of the force NLL lower the
    NLL of the training labels under the heads' mean and variance; the heads still disagree, finitely."""
    from mace.tools.torch_geometric import Batch

    from almat.learner.mace import atoms_to_dataset
    from almat.learner.shallow import nll_loss

    train, test = cu_data
    ids = [f"c{i}" for i in range(len(train))]
    hp = MaceHyperParameters(num_channels=8, epochs=8, batch_size=8, eval_every=4)
    plain = train_shallow_mace(train, ids, hp, seed=2, n_heads=3)
    tuned = train_shallow_mace(train, ids, hp, seed=2, n_heads=3, nll_epochs=4)
    assert len(tuned.history) > len(plain.history) and tuned.history[-1].get("nll") == 1.0

    def nll(model):
        data = atoms_to_dataset(train, [29], float(model.r_max))
        batch = Batch.from_data_list(data)
        return float(nll_loss(batch, head_outputs(model, batch.to_dict()), hp))

    assert nll(tuned.model) < nll(plain.model)
    spread = tuned.metrics["head_force_spread"]
    assert np.isfinite(spread) and spread > 0
    prediction = Committee([tuned.model]).predict(test)
    assert np.all(np.isfinite(prediction.model_deviation)) and np.all(prediction.model_deviation > 0)
