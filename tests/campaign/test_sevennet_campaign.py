"""A whole campaign with SevenNet-0: initial structures from MD with the pretrained 7net-0 (zero-shot, before any
label), a committee of members fine-tuned from the bundled weights, on EMT. A real ``almat run`` is killed
with SIGKILL while it trains iteration 0's committee, and ``almat run --resume`` takes it to its end with
nothing lost, duplicated or half-written."""

import numpy as np
import pytest

pytest.importorskip("sevenn")

from almat.learner.committee import Committee  # noqa: E402
from almat.learner.jobs import load_labels  # noqa: E402
from almat.stores import CampaignDB  # noqa: E402
from test_kill import Runner, _intact  # noqa: E402 - tests/campaign is on the path of its test modules

CONFIG = {
    "name": "cu-sevennet",
    "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True}}],
    "initial": {"method": "foundation-md", "n_per_structure": 4, "md_temperature": 800, "md_steps": 12},
    "learner": {"kind": "sevennet-finetune", "n_models": 2,
                "hyperparameters": {"epochs": 2, "warm_start_epochs": 1, "batch_size": 2}},
    "sampler": {"temperatures": [600], "steps": 8, "sample_every": 4, "trust_lo": 0.0001, "trust_hi": 5.0},
    "selection": {"policy": "max_deviation", "max_select": 2},
    "convergence": {"rule": "calibrated", "force_tolerance": 0.001, "calibration_samples": 2, "max_iterations": 2},
}


@pytest.mark.slow
def test_sevennet_campaign_from_a_zero_shot_start_resumes_after_a_kill(tmp_path, settings):
    run = Runner(tmp_path, settings, CONFIG)
    run.kill_when(run.start(), "models", 1)  # while iteration 0's second member trains
    run.finish()
    labels = _intact(settings, CONFIG["name"], "iterations", 2)
    with CampaignDB.from_settings(settings) as db:
        init = list(db.structures.query({"campaign": "cu-sevennet", "iteration": -1}))
        assert sorted(d["source"] for d in init) == ["init"] + ["md"] * 3  # frames of 7net-0's own MD
        models = list(db.models.query({"campaign": "cu-sevennet"}))
        assert len(models) == 4 and {m["architecture"] for m in models} == {"SevenNet"}
        last = max(db.iterations.query({"campaign": "cu-sevennet"}), key=lambda d: d["iteration"])
        committee = Committee.from_store(db, last["model_ids"])  # state dicts, read with weights_only
        ok = load_labels(db, [d["label_id"] for d in labels if d["status"] == "ok"])
    frames = [lab.to_atoms() for lab in ok]
    pred = committee.predict(frames)
    e_err = (pred.mean_energy - np.array([a.get_potential_energy() for a in frames])) / len(frames[0])
    assert np.sqrt(np.mean(e_err ** 2)) < 0.05  # eV/atom: on EMT's energy scale, not 7net-0's PBE one
    assert np.all(pred.model_deviation > 0)
