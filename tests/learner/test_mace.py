import numpy as np
import pytest
from jobflow import run_locally

from almat.learner.committee import Committee
from almat.learner.hyperparameters import MaceHyperParameters
from almat.learner.jobs import TrainCommitteeMaker
from almat.learner.mace import predict, train_mace
from almat.learner.models import model_from_bytes, model_to_bytes
from almat.oracle import CalculatorSpec, label_with_calculator
from almat.schemas import ModelDoc, to_structure


def _force_rms(atoms_list):
    return float(np.sqrt(np.mean([np.mean(a.get_forces() ** 2) for a in atoms_list])))


def test_training_learns_emt_forces(cu_data, tiny_committee):
    train, held_out = cu_data
    committee, results = tiny_committee
    baseline = _force_rms(held_out)  # error of predicting zero forces
    pred = committee.predict(held_out)
    ref = np.concatenate([a.get_forces() for a in held_out])
    mean_f = np.concatenate([pred.mean_forces(i) for i in range(len(held_out))])
    rmse = float(np.sqrt(np.mean((mean_f - ref) ** 2)))
    assert rmse < 0.5 * baseline, (rmse, baseline)
    for r in results:
        assert set(r.train_ids).isdisjoint(r.valid_ids)
        assert len(r.train_ids) + len(r.valid_ids) == len(train)
        assert r.metrics["force_rmse"] < baseline
        assert r.history and r.history[-1]["epoch"] == r.epochs


def test_members_differ_by_seed(tiny_committee):
    _, results = tiny_committee
    assert results[0].valid_ids != results[1].valid_ids or results[0].metrics != results[1].metrics
    p0 = dict(results[0].model.named_parameters())
    p1 = dict(results[1].model.named_parameters())
    name = next(n for n in p0 if p0[n].numel() > 4)
    assert not np.allclose(p0[name].detach().numpy(), p1[name].detach().numpy())


def test_serialisation_roundtrip_predicts_identically(cu_data, tiny_committee):
    _, held_out = cu_data
    model = tiny_committee[1][0].model
    again = model_from_bytes(model_to_bytes(model))
    e1, f1 = predict([model], held_out[:3])
    e2, f2 = predict([again], held_out[:3])
    np.testing.assert_allclose(e1, e2)
    np.testing.assert_allclose(f1[0], f2[0])


def test_prediction_refuses_unknown_elements(tiny_committee):
    from ase.build import bulk

    with pytest.raises(ValueError, match="not trained on Al"):
        tiny_committee[0].predict([bulk("Al", "fcc", a=4.05)])


def test_bad_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match="dtype"):
        MaceHyperParameters(dtype="float16")
    with pytest.raises(ValueError, match="extra"):
        MaceHyperParameters(epoch=3)
    with pytest.raises(ValueError, match="at least 2 models"):
        TrainCommitteeMaker(n_models=1)


def test_warm_start_continues_from_previous_model(cu_data, tiny_committee):
    train, _ = cu_data
    prev = tiny_committee[1][0]
    hp = MaceHyperParameters(num_channels=8, epochs=50, warm_start_epochs=2, batch_size=6)
    ids = [f"c{i}" for i in range(len(train))]
    r = train_mace(train, ids, hp, seed=5, init_model=prev.model)
    assert r.epochs == 2
    # two epochs from the trained model keep its accuracy (from scratch, 2 epochs would be far off)
    assert r.metrics["train_force_rmse"] < 1.5 * prev.metrics["train_force_rmse"]


def test_train_committee_job_stores_models(job_store, db, cu_data):
    train, _ = cu_data
    spec = CalculatorSpec("ase.calculators.emt", "EMT")
    labels = [label_with_calculator(to_structure(a), spec, campaign="c", iteration=-1) for a in train[:10]]
    db.upsert("labels", labels)
    maker = TrainCommitteeMaker(n_models=2, hyperparameters={"num_channels": 8, "epochs": 3, "batch_size": 5})
    job = maker.make([lab.label_id for lab in labels], campaign="c", iteration=0)
    out = run_locally(job, store=job_store, log=False, ensure_success=True)[job.uuid][1].output
    assert len(out.model_ids) == 2 and out.n_labels == 10
    docs = [ModelDoc.from_store(db.models.query_one({"model_id": m})) for m in out.model_ids]
    for doc in docs:
        assert sorted(doc.training_label_ids + doc.validation_label_ids) == sorted(l.label_id for l in labels)
        assert doc.epochs_trained == 3 and doc.n_parameters > 1000 and doc.elements == ["Cu"]
        assert "force_rmse" in doc.validation_metrics
    assert docs[0].seed != docs[1].seed
    committee = Committee.from_store(db, out.model_ids)
    pred = committee.predict([train[0]])
    assert pred.forces[0].shape == (2, len(train[0]), 3) and np.all(np.isfinite(pred.energies))
