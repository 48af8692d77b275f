"""NFT campaigns: the config and stop rules of the explorer without the workflow, then campaigns end to end
(EMT on Cu, a tiny 2-model MACE committee, 2 iterations, run_locally)."""

import numpy as np
import pytest

from almat.campaign import CampaignMaker, ConfigError, load_config, run_campaign
from almat.campaign.nft import stop_decision
from almat.campaign.sources import load_target
from almat.schemas import LabelDoc, ModelDoc, NftIterationDoc

CUTOFF = 4.5
CU = {"name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True}


def _config(name, mode, epochs=8):
    chunks = {"mode": mode, "cutoff": 4.5, "percentile": 95, "max_chunks": 3, "vacuum": 5.0}
    if mode == "periodic":
        chunks["cell"] = [10.0, 10.0, 10.0]
    return {
        "kind": "nft",
        "name": name,
        "target": {"bulk": CU, "supercell": [3, 3, 3], "rattle_std": 0.1, "vacancies": 1, "seed": 0,
                   "evaluate_with_oracle": True},
        "structures": [{"bulk": CU, "supercell": [2, 2, 2]}],
        "initial": {"n_per_structure": 6, "rattle_std": 0.05, "max_strain": 0.02},
        "learner": {"n_models": 2, "hyperparameters": {
            "num_channels": 8, "r_max": 4.0, "radial_mlp": [16], "epochs": epochs, "warm_start_epochs": 4,
            "batch_size": 4, "eval_every": 4}},
        "chunks": chunks,
        "convergence": {"stop_delta": 0.001, "max_iterations": 2, "steps_not_improved": 2},
    }


def _small(**chunks):
    return {
        "kind": "nft",
        "name": "nft-cfg",
        "target": {"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True}, "supercell": [3, 3, 3]},
        "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True}}],
        "learner": {"hyperparameters": {"r_max": 4.0}},
        "chunks": {"cutoff": CUTOFF, **chunks},
    }


def test_config_validation():
    cfg = load_config(_small())
    assert cfg.kind == "nft" and cfg.chunks.mode == "cluster"
    assert len(load_target(cfg)) == 108
    with pytest.raises(ConfigError, match="chunks.percentile"):
        load_config(_small(percentile=150))
    with pytest.raises(ConfigError, match="chunks.coefficient"):
        load_config(_small(coefficient=0))
    with pytest.raises(ConfigError, match="chunks.max_chunk: unknown key"):
        load_config(_small(max_chunk=3))
    with pytest.raises(ConfigError, match=r"each be > 2 x cutoff = 9 Å"):
        load_config(_small(mode="periodic", cell=[8, 10, 10]))
    with pytest.raises(ConfigError, match="must exceed the model cutoff"):
        load_config(_small(vacuum=3.0))
    with pytest.raises(ConfigError, match="target: unknown key"):
        load_config({**_small(), "kind": "md"})
    with pytest.raises(ConfigError, match="kind: 'nfts' is not a campaign kind; valid: md, pool, nft"):
        load_config({**_small(), "kind": "nfts"})
    small = _small()
    small["target"]["supercell"] = [2, 2, 2]
    with pytest.raises(ValueError, match=r"smaller than the cutoff sphere.*7\.22 Å"):
        CampaignMaker.from_config(small)  # before any job runs
    with pytest.raises(ValueError, match="not smaller than the target"):
        CampaignMaker.from_config(_small(mode="periodic", cell=[11.0, 11.0, 11.0]))


def test_example_workflow_is_valid():
    from pathlib import Path

    maker = CampaignMaker.from_config(Path(__file__).parents[2] / "workflows" / "cu_nft_emt.yaml")
    assert len(load_target(maker.config)) == 255 and maker.config.kind == "nft"


def test_stop_rules():
    cfg = load_config({
        **_small(), "convergence": {"stop_delta": 0.05, "max_iterations": 5, "steps_not_improved": 2}})
    assert stop_decision(0.04, [], 0, cfg)[0] == "stop_delta"
    assert stop_decision(0.2, [0.3, 0.25], 4, cfg)[0] == "max_iterations"
    assert stop_decision(0.2, [0.3], 1, cfg) == (None, None)  # improved
    assert stop_decision(0.3, [0.3], 1, cfg) == (None, None)  # 1 iteration without improvement: go on
    kind, reason = stop_decision(0.31, [0.2, 0.3], 2, cfg)
    assert kind == "steps_not_improved" and "2 iteration(s)" in reason


@pytest.mark.parametrize("mode", ["cluster", "periodic"])
def test_nft_campaign_runs_end_to_end(settings, db, mode):
    result = run_campaign(_config(f"cu-nft-{mode}", mode), settings)
    n_target = 107  # 3x3x3 cubic fcc Cu minus one vacancy

    assert result.stop in ("stop_delta", "max_iterations", "steps_not_improved")
    assert result.campaign.status.value in ("converged", "max_iterations", "stopped")
    assert result.campaign.config["kind"] == "nft"
    stored = sorted(db.nft_iterations.query({"campaign": f"cu-nft-{mode}"}), key=lambda d: d["iteration"])
    assert [d["iteration"] for d in stored] == [it.iteration for it in result.iterations]
    docs = [NftIterationDoc.from_store(d) for d in stored]
    assert docs[-1].stop == result.stop and docs[-1].stop_reason
    assert all(d.stop is None for d in docs[:-1])

    first = docs[0]
    assert first.stop is None, "iteration 0 of 2 must go on (stop_delta is tiny)"
    assert first.n_target_atoms == n_target
    assert first.mode == mode and first.cutoff == 4.5 and first.percentile == 95
    for doc in docs:
        assert len(doc.atomic_uncertainties) == n_target
        assert doc.max_uncertainty == pytest.approx(max(doc.atomic_uncertainties))
        assert doc.threshold == pytest.approx(np.percentile(doc.atomic_uncertainties, 95))
        assert len(doc.model_ids) == 2
        assert all(db.models.query_one({"model_id": m}) is not None for m in doc.model_ids)
        assert doc.target_force_rmse is not None and doc.target_force_rmse > 0
    # the central atoms are the most uncertain atoms (above the threshold)
    assert 1 <= first.n_chunks <= 3 and first.n_labelled == first.n_chunks
    assert set(first.central_atoms) <= set(first.uncertain_atoms)
    assert first.uncertain_atoms[0] == int(np.argmax(first.atomic_uncertainties))
    assert all(first.atomic_uncertainties[i] >= first.threshold for i in first.central_atoms)
    assert sorted(first.central_atoms + first.skipped_atoms) == sorted(first.uncertain_atoms)

    chunk_label_ids = []
    for record in first.chunks:
        assert record.label_ok and record.label_id in first.chunk_label_ids
        assert record.natoms < n_target  # chunks are smaller than the target
        assert set(record.central_atoms) <= set(first.central_atoms)
        label = LabelDoc.from_store(db.labels.query_one({"label_id": record.label_id}))
        assert label.source.value == "nft-chunk" and label.natoms == record.natoms
        assert label.energy_weight == 0.0
        w = np.asarray(label.force_weights)
        assert set(w.tolist()) <= {0.0, 1.0}
        np.testing.assert_array_equal(np.flatnonzero(w), sorted(record.central_atoms_chunk))
        assert len(record.central_atoms) == len(record.central_atoms_chunk) == int(w.sum())
        assert [record.target_indices[k] for k in record.central_atoms_chunk] == record.central_atoms
        chunk_label_ids.append(record.label_id)

    # iteration 1 trained on the initial labels plus the chunks (masked), warm-started from iteration 0
    second = docs[1]
    assert second.n_train_labels == first.n_train_labels + len(chunk_label_ids)
    model = ModelDoc.from_store(db.models.query_one({"model_id": second.model_ids[0]}))
    assert set(chunk_label_ids) <= set(model.training_label_ids) | set(model.validation_label_ids)
    assert model.warm_started_from == first.model_ids[0]
    assert second.stop == "max_iterations" and second.n_chunks == 0  # the last round labels nothing


def test_nft_campaign_name_cannot_be_reused(settings):
    from almat.campaign import CampaignExistsError

    cfg = _config("cu-nft-once", "cluster", epochs=2)
    cfg["convergence"] = {"stop_delta": 100.0, "max_iterations": 2}  # stops at iteration 0: stop_delta
    result = run_campaign(cfg, settings)
    assert result.stop == "stop_delta" and result.campaign.status.value == "converged"
    assert len(result.iterations) == 1 and result.iterations[0].n_chunks == 0
    with pytest.raises(CampaignExistsError, match="already exists"):
        run_campaign(cfg, settings)
