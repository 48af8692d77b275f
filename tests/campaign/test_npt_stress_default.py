"""The NPT stress default (issue 23): a campaign with an NPT stage trains on stresses with ``NPT_STRESS_WEIGHT``
unless its learner gives ``stress_weight`` or cannot train on stresses. The config keeps what its file says, so
old campaign files keep their fingerprints (the values are those of tests/campaign/test_fingerprint.py), an
explicit ``stress_weight: 0.1`` included."""

from pathlib import Path

import pytest

from almat.campaign.config import load_config
from almat.campaign.flow import CampaignMaker
from almat.campaign.settings.md import npt_stages, training_learner
from almat.learner.hyperparameters import NPT_STRESS_WEIGHT

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
CU = {"name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True}
MD = {"name": "fp-md", "structures": [{"bulk": CU, "supercell": [2, 2, 2]}], "learner": {"n_models": 2}}
STAGES = {"walkers_per_condition": 2, "stages": [
    {"name": "nvt", "ensemble": "nvt", "temperatures": [300]},
    {"name": "npt", "ensemble": "npt", "temperatures": [600], "pressures": [1.0], "pressure_unit": "GPa",
     "adaptive_lo": {"fraction": 0.1}, "convergence": {"max_iterations": 2}}]}
NPT = {**MD, "sampler": STAGES}


def _with_learner(config: dict, **learner) -> dict:
    return {**config, "learner": {**config["learner"], **learner}}


def _trained(config) -> float:
    return training_learner(config).hyperparameters.stress_weight


def test_an_npt_stage_turns_stress_training_on_and_keeps_the_old_fingerprint():
    config = load_config(NPT)
    assert npt_stages(config) == ["npt"]
    assert _trained(config) == NPT_STRESS_WEIGHT > 0
    assert config.learner.hyperparameters.stress_weight == 0.0  # the file's value, as stored and hashed
    assert config.fingerprint() == "4d4b172d41617b8d"  # md_npt_stages before the default
    again = load_config(config.model_dump(mode="json", by_alias=True))  # as a campaign document stores it
    assert again == config and again.fingerprint() == "4d4b172d41617b8d"
    # the committee's Maker trains with the default
    assert CampaignMaker.from_config(config).trainer.hyperparameters.stress_weight == NPT_STRESS_WEIGHT


def test_the_npt_workflow_trains_on_stresses_with_its_old_fingerprint():
    config = load_config(WORKFLOWS / "li6ps5cl_npt.yaml")
    assert _trained(config) == NPT_STRESS_WEIGHT
    assert config.fingerprint() == "173c481b8294d951"


@pytest.mark.parametrize("weight", [0.0, 0.1, 0.5])
def test_a_given_stress_weight_is_kept_and_hashed_as_given(weight):
    config = load_config(_with_learner(NPT, hyperparameters={"stress_weight": weight}))
    assert _trained(config) == weight
    # an explicit weight hashes as it always did: 0 like the default, any other value differently
    assert (config.fingerprint() == "4d4b172d41617b8d") == (weight == 0.0)


def test_nvt_campaigns_shallow_ensembles_and_chgnet_stay_without_stresses():
    assert _trained(load_config(MD)) == 0.0
    assert npt_stages(load_config(MD)) == []
    assert _trained(load_config(_with_learner(NPT, uncertainty="shallow"))) == 0.0
    chgnet = training_learner(load_config(_with_learner(NPT, kind="chgnet-finetune"))).hyperparameters
    assert not hasattr(chgnet, "stress_weight")


def test_a_single_stage_npt_sampler_counts_as_an_npt_stage():
    config = load_config({**MD, "sampler": {"ensemble": "npt", "pressures": [1.0], "pressure_unit": "GPa"}})
    assert npt_stages(config) == ["0"]  # an unnamed stage goes by its index
    assert _trained(config) == NPT_STRESS_WEIGHT
