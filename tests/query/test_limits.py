"""Large objects live in the data store; campaign documents stay under MongoDB's 16 MB limit."""

import numpy as np
import pytest
import torch
from almat_query_testutils import cu_structures, label_all

from almat.learner.committee import load_model, save_model
from almat.learner.hyperparameters import MaceHyperParameters
from almat.learner.mace import mace_architecture
from almat.learner.models import model_from_architecture
from almat.schemas import DeviationHistogram, IterationDoc, ModelDoc
from almat.stores import CAMPAIGN_COLLECTIONS, get_blob, put_blob
from almat.stores.limits import MAX_DOCUMENT_BYTES, DocumentTooLargeError, assert_document_size, document_size


def test_model_and_trajectory_over_16mb_round_trip_through_the_data_store(db):
    torch.manual_seed(0)
    hp = MaceHyperParameters(radial_mlp=[1500, 1500])  # two 1500x1500 radial layers: ~4.5 M floats
    model = model_from_architecture(mace_architecture(hp, [29], [-3.5], 12.0, 1.0, 0.0))
    blob_id = save_model(db.data, model, campaign="big")
    stored = db.data.query_one({"blob_uuid": blob_id})
    assert document_size(stored) > MAX_DOCUMENT_BYTES  # the blob itself is larger than a MongoDB document
    doc = ModelDoc(campaign="big", iteration=0, weights_blob_id=blob_id, training_label_ids=["x"] * 10)
    db.upsert("models", [doc])
    back = load_model(db.data, ModelDoc.from_store(db.models.query_one({"model_id": doc.model_id})))
    for p, q in zip(model.parameters(), back.parameters()):
        assert torch.equal(p, q)

    # a trajectory of 8000 frames of 30 atoms (positions, forces, cell) as one blob
    rng = np.random.default_rng(0)
    traj = {"positions": rng.normal(size=(8000, 30, 3)).tolist(), "forces": rng.normal(size=(8000, 30, 3)).tolist(),
            "cell": np.eye(3).tolist(), "symbols": ["Cu"] * 30}
    traj_id = put_blob(db.data, traj, kind="trajectory", campaign="big")
    assert document_size(db.data.query_one({"blob_uuid": traj_id})) > MAX_DOCUMENT_BYTES
    assert get_blob(db.data, traj_id)["positions"] == traj["positions"]

    it = IterationDoc(campaign="big", iteration=0, trust_lo=0.05, trust_hi=0.3, model_ids=[doc.model_id],
                      trajectory_blob_ids=[traj_id],
                      deviation_histogram=DeviationHistogram(bin_edges=[0, 0.1, 1], counts=[5, 1]))
    db.upsert("iterations", [it])
    db.upsert("labels", label_all(cu_structures(3), campaign="big", iteration=0))
    # every campaign document written stays under the limit (they reference the blobs)
    n = 0
    for name in CAMPAIGN_COLLECTIONS:
        for stored_doc in getattr(db, name).query({}):
            assert assert_document_size(stored_doc) < MAX_DOCUMENT_BYTES
            n += 1
    assert n == 1 + 1 + 3


def test_oversized_document_is_refused_with_a_clear_message():
    big = {"model_id": "m1", "weights": "x" * (MAX_DOCUMENT_BYTES + 10)}
    with pytest.raises(DocumentTooLargeError, match=r"model_id='m1'.*largest field 'weights'.*put_blob"):
        assert_document_size(big)
    assert assert_document_size({"a": 1}) == len(b"\x0c\x00\x00\x00\x10a\x00\x01\x00\x00\x00\x00")
