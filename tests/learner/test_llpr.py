"""LLPR: one MACE model, the covariance of its last layer, a per-atom force uncertainty from one pass."""

import io

import numpy as np
import pytest
import torch

from almat.campaign import load_config
from almat.learner.committee import Committee
from almat.learner.hyperparameters import MaceHyperParameters
from almat.learner.jobs import TrainCommitteeMaker
from almat.learner.llpr import COVARIANCE_KEY, base_model, llpr_outputs
from almat.learner.mace import model_inputs
from almat.learner.models import model_from_bytes, model_to_bytes
from almat.learner.registry import load_learner
from almat.learner.settings import LearnerSettings
from emt_cu import emt_cu_atoms

HP = MaceHyperParameters(num_channels=8, epochs=10, warm_start_epochs=3, batch_size=8, eval_every=5)


@pytest.fixture(scope="module")
def trained_llpr(cu_data):
    train, _ = cu_data
    learner = load_learner("mace", "llpr")
    return learner.train(train, [f"c{i}" for i in range(len(train))], HP, seed=0)


def _batch(model, frames):
    from mace.tools.torch_geometric import Batch

    return Batch.from_data_list(model_inputs([model], frames))


def test_uncertainty_is_larger_far_from_the_training_data(trained_llpr, cu_data):
    """Frames rattled 4x more than the training data get a larger uncertainty than held-out frames like them,
    and the uncertainty follows the true force error across both."""
    _, test = cu_data
    far = emt_cu_atoms(6, seed=5, rattle=0.24)
    committee = Committee([trained_llpr.model])
    assert committee.n_members == 2 and committee.shallow  # two synthetic members; the mean alone costs one model
    near_u, far_u = committee.predict(test).model_deviation, committee.predict(far).model_deviation
    assert np.all(np.isfinite(near_u)) and np.all(near_u > 0)
    assert np.median(far_u) > 3 * np.median(near_u)
    prediction = committee.predict(test + far)
    errors = [np.linalg.norm(prediction.mean_forces(i) - a.get_forces(), axis=1).max()
              for i, a in enumerate(test + far)]
    from scipy.stats import spearmanr

    assert spearmanr(prediction.model_deviation, errors).statistic > 0.5
    metrics = trained_llpr.metrics
    assert metrics["llpr_alpha2"] > 0 and metrics["llpr_regulariser"] > 0 and np.isfinite(metrics["llpr_valid_nll"])


def test_the_mean_is_the_model_and_the_members_deviation_is_sigma(trained_llpr, cu_data):
    model = trained_llpr.model
    frames = cu_data[1][:3]
    batch = _batch(model, frames)
    reference = base_model(model)(batch.to_dict(), compute_force=True)
    out = llpr_outputs(model, batch.to_dict())
    assert torch.allclose(out["energy"], reference["energy"].detach(), atol=1e-4)
    assert torch.allclose(out["forces"], reference["forces"].detach(), atol=1e-5)
    prediction = Committee([model]).evaluate(frames)
    sigma = out["sigma"].numpy()
    assert np.allclose(np.concatenate([prediction.atomic_deviation(i) for i in range(3)]), sigma, rtol=1e-5)
    assert np.allclose(prediction.mean_forces(0), out["forces"].numpy()[:8], atol=1e-6)
    # the mean only (MD steps whose uncertainty is not recorded): one row, no deviation
    cheap = Committee([model]).evaluate(frames, deviation=False)
    assert not cheap.with_deviation and np.allclose(cheap.forces[0][0], prediction.mean_forces(0))
    # fewer covariance directions: a part of the variance (a lower bound)
    low = llpr_outputs(model, batch.to_dict(), rank=2)["sigma"]
    assert torch.all(low <= out["sigma"] + 1e-6) and float(low.sum()) < float(out["sigma"].sum())


def test_stored_with_its_covariance_reloads_with_weights_only(trained_llpr, cu_data):
    model = trained_llpr.model
    blob = model_to_bytes(model)
    payload = torch.load(io.BytesIO(blob), weights_only=True)
    assert payload["architecture"]["class"] == "LLPRMACE"
    assert payload["architecture"]["kwargs"]["base"]["class"] == "ScaleShiftMACE"
    assert COVARIANCE_KEY in payload["state_dict"] and torch.any(payload["state_dict"][COVARIANCE_KEY] != 0)
    from almat.learner import models

    models._BUILT.clear()  # rebuild it from the bytes, not from this process's cache
    again = model_from_bytes(blob)
    frames = cu_data[1][:2]
    a, b = Committee([model]).predict(frames), Committee([again]).predict(frames)
    assert np.allclose(a.model_deviation, b.model_deviation) and np.allclose(a.energies, b.energies)


def test_warm_start_continues_from_the_base_weights(trained_llpr, cu_data):
    train, _ = cu_data
    learner = load_learner("mace", "llpr")
    more = learner.train(train, [f"c{i}" for i in range(len(train))], HP, seed=1, init_model=trained_llpr.model)
    assert more.epochs == HP.warm_start_epochs
    assert more.model.almat_architecture["class"] == "LLPRMACE"
    assert not torch.equal(getattr(more.model, COVARIANCE_KEY), getattr(trained_llpr.model, COVARIANCE_KEY))


def test_a_learner_without_a_last_layer_is_refused_in_one_line():
    campaign = {"name": "x", "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}}],
                "learner": {"kind": "chgnet-finetune", "uncertainty": "llpr"}}
    for make in (lambda: load_config(campaign),
                 lambda: TrainCommitteeMaker(learner="chgnet-finetune", uncertainty="llpr")):
        with pytest.raises(ValueError) as info:
            make()
        message = str(info.value)
        assert "llpr" in message and "chgnet-finetune" in message and "\n" not in message.strip()
    with pytest.raises(ValueError, match="nll_epochs: only a shallow ensemble"):
        LearnerSettings(uncertainty="llpr", nll_epochs=3)


@pytest.mark.slow
def test_finetuned_foundation_gets_its_covariance_and_reloads(tmp_path):
    """``mace-finetune`` with ``uncertainty: llpr``: the fine-tuned member (record ``MACE``) carries the
    covariance, its uncertainty grows away from its labels, and it reloads with ``weights_only=True``."""
    from almat.learner import models
    from almat.learner.hyperparameters import MaceFinetuneHyperParameters
    from mace_foundation import emt_frames, write_foundation

    path, _ = write_foundation(tmp_path, epochs=10)
    labels, test = emt_frames(10, 5, shift=1.5), emt_frames(4, 6, shift=1.5)
    hp = MaceFinetuneHyperParameters(foundation={"path": str(path)}, epochs=6, batch_size=5)
    result = load_learner("mace-finetune", "llpr").train(labels, [f"l{i}" for i in range(10)], hp, seed=1)
    model = result.model
    record = model.almat_architecture
    assert record["class"] == "LLPRMACE" and record["kwargs"]["base"]["class"] == "MACE"
    blob = model_to_bytes(model)
    torch.load(io.BytesIO(blob), weights_only=True)
    models._BUILT.clear()
    again = Committee([model_from_bytes(blob)])
    far = [a.copy() for a in test]
    for a in far:
        a.rattle(0.3, seed=2)
    assert np.median(again.predict(far).model_deviation) > 2 * np.median(again.predict(test).model_deviation)
    assert np.allclose(again.predict(test).mean_energy, Committee([model]).predict(test).mean_energy, atol=1e-5)
