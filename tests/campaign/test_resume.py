"""Pool and NFT campaigns interrupted in the middle of an iteration's labelling resume to their end, with
nothing lost or duplicated (EMT on Cu, tiny 2-model committees, the embedded store)."""

from collections import Counter

import pytest

from almat.campaign import load_config, run_campaign
from almat.schemas import CampaignStatus
from almat.stores import CampaignDB

ORACLE = {"calculator": {"module": "interrupting", "class": "InterruptingEMT"}}
HP = {"num_channels": 8, "epochs": 6, "warm_start_epochs": 3, "batch_size": 4, "eval_every": 3}
CU = {"name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True}


def _interrupted_then_resumed(config, settings, monkeypatch, tmp_path, at):
    monkeypatch.setenv("ALMAT_TEST_INTERRUPT", f"{tmp_path / 'calls'}:{at}")
    with pytest.raises(KeyboardInterrupt):
        run_campaign(config, settings)
    with CampaignDB.from_settings(settings) as db:
        before = db.labels.count({"campaign": config["name"]})
        doc = db.campaigns.query_one({"name": config["name"]})
        assert doc["status"] == "failed" and doc["stop_reason"] == "interrupted (KeyboardInterrupt); resume it"
    monkeypatch.delenv("ALMAT_TEST_INTERRUPT")
    result = run_campaign(config, settings, resume=True)
    with CampaignDB.from_settings(settings) as db:
        labels = list(db.labels.query({"campaign": config["name"]}))
    hashes = Counter(d["structure_hash"] for d in labels)
    assert not [h for h, n in hashes.items() if n > 1], "a configuration was labelled twice"
    assert len(labels) >= before  # nothing stored before the interruption was lost
    return result, labels


@pytest.mark.slow
@pytest.mark.parametrize("at", [16, 21])  # iteration 0's batch (no record yet), iteration 1's batch
def test_pool_campaign_resumes_after_an_interruption(settings, monkeypatch, tmp_path, at):
    config = {"kind": "pool", "name": f"pool-kill-{at}", "oracle": ORACLE,
              "pool": [{"bulk": CU, "perturb": {"n": 30, "rattle_std": 0.05, "max_strain": 0.03, "seed": 1}}],
              "learner": {"n_models": 2, "hyperparameters": HP}, "n_init": 6, "budget": 4, "n_test": 8,
              "max_iterations": 3, "seed": 5}
    result, labels = _interrupted_then_resumed(config, settings, monkeypatch, tmp_path, at)
    recs = result.iterations
    assert [r.iteration for r in recs] == [0, 1, 2] and result.campaign.status == CampaignStatus.max_iterations
    assert [r.n_labels for r in recs] == [6, 10, 14]
    for prev, rec in zip(recs, recs[1:]):
        assert rec.new_indices == prev.acquired_indices
        assert rec.labelled_indices == prev.labelled_indices + rec.new_indices
    assert len(labels) == 8 + 14 and all(d["status"] == "ok" for d in labels)


@pytest.mark.slow
def test_nft_campaign_resumes_after_an_interruption(settings, monkeypatch, tmp_path):
    config = {"kind": "nft", "name": "nft-kill", "oracle": ORACLE,
              "target": {"bulk": CU, "supercell": [3, 3, 3], "rattle_std": 0.1, "vacancies": 1},
              "structures": [{"bulk": CU, "supercell": [2, 2, 2]}], "initial": {"n_per_structure": 6},
              "learner": {"n_models": 2, "hyperparameters": {**HP, "r_max": 4.0, "radial_mlp": [16]}},
              "chunks": {"cutoff": 4.5, "percentile": 95, "max_chunks": 2, "vacuum": 5.0},
              "convergence": {"stop_delta": 0.001, "max_iterations": 3, "steps_not_improved": 3}}
    load_config(config)
    result, labels = _interrupted_then_resumed(config, settings, monkeypatch, tmp_path, 8)  # a chunk of iteration 0
    recs = result.iterations
    assert [r.iteration for r in recs] == [0, 1, 2] and recs[-1].stop == "max_iterations"
    assert recs[1].n_train_labels == recs[0].n_train_labels + recs[0].n_labelled
    assert len(labels) == 6 + sum(r.n_chunks for r in recs)
