"""The learner registry and the ``Learner`` contract: kinds, hyperparameters, architectures, the Maker that holds
a learner, and the "How to add a learner" page."""

import json
import re
from pathlib import Path

import pytest
from jobflow import Maker
from monty.json import jsanitize

from almat.campaign import load_config
from almat.learner.base import Learner
from almat.learner.chgnet import ChgnetLearner
from almat.learner.hyperparameters import MaceFinetuneHyperParameters, MaceHyperParameters
from almat.learner.jobs import TrainCommitteeMaker
from almat.learner.mace import MaceLearner
from almat.learner.mace_finetune import MaceFinetuneLearner
from almat.learner.registry import (LEARNERS, architectures, hyperparameters_class, learner_of, load_learner,
                                    register_learner)
from almat.learner.settings import LearnerSettings
from almat.learner.shallow import ShallowMaceLearner
from almat.learner.zero_shot import foundation_calculator

ROOT = Path(__file__).resolve().parents[2]
BASE = {"name": "x", "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}}]}


@pytest.fixture
def builtin_only(monkeypatch):
    """The registry as almat ships it: learners registered by other test modules (the toy) left out here."""
    from almat.learner import registry

    builtin = ("mace", "mace-finetune", "chgnet-finetune")
    for table in (registry.LEARNERS, registry.HYPERPARAMETERS, registry.SHALLOW_LEARNERS, registry.EXTRAS):
        for kind in [k for k in table if k not in builtin]:
            monkeypatch.delitem(table, kind)


def test_the_registry_names_every_learner_and_their_models(builtin_only):
    assert list(LEARNERS) == ["mace", "mace-finetune", "chgnet-finetune"]
    assert [type(load_learner(k)) for k in LEARNERS] == [MaceLearner, MaceFinetuneLearner, ChgnetLearner]
    assert type(load_learner("mace", "shallow")) is ShallowMaceLearner
    assert {"ScaleShiftMACE", "MACE", "CHGNet", "ShallowEnsembleMACE"} <= set(architectures())
    assert [type(learner_of(a)) for a in ("ScaleShiftMACE", "MACE", "CHGNet", "ShallowEnsembleMACE")] == [
        MaceLearner, MaceFinetuneLearner, ChgnetLearner, ShallowMaceLearner]
    assert hyperparameters_class("mace-finetune") is MaceFinetuneHyperParameters
    with pytest.raises(ValueError, match=r"unknown learner kind 'gap'; valid: mace, mace-finetune, chgnet-finetune"):
        load_learner("gap")
    with pytest.raises(ValueError, match=r"uncertainty: shallow needs a learner that can have heads \(mace\)"):
        load_learner("chgnet-finetune", "shallow")
    with pytest.raises(ValueError, match=r"no registered learner builds 'Nequip' models; known: ScaleShiftMACE"):
        learner_of("Nequip")
    with pytest.raises(ValueError, match=r"learner must be 'module:Class'"):
        register_learner("bad", "no_colon", hyperparameters=MaceHyperParameters)


def test_a_learner_whose_module_is_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(LEARNERS, "ghost", "almat_ghost_learner:Ghost")
    with pytest.raises(ValueError, match=r"^learner ghost: cannot import its module 'almat_ghost_learner'"):
        load_learner("ghost")


def test_the_maker_holds_a_learner_and_its_validated_hyperparameters():
    maker = TrainCommitteeMaker(n_models=2, hyperparameters={"num_channels": 8}, learner="mace")
    assert isinstance(maker.learner, Learner) and maker.learner.kind == "mace"
    assert isinstance(maker.hyperparameters, MaceHyperParameters) and maker.hp is maker.hyperparameters
    assert maker.hp.num_channels == 8  # validated once, held as the object
    # jobflow serialises it (learner and hyperparameters as MSONables) and rebuilds the same Maker
    again = TrainCommitteeMaker.from_dict(json.loads(json.dumps(jsanitize(maker.as_dict(), strict=True))))
    assert again == maker and isinstance(again, Maker)
    # atomate2-style updates reach the held hyperparameters, validated again
    updated = maker.update_kwargs({"_set": {"hyperparameters->epochs": 3}}, dict_mod=True)
    assert isinstance(updated.hp, MaceHyperParameters) and (updated.hp.epochs, updated.hp.num_channels) == (3, 8)
    with pytest.raises(ValueError, match=r"hyperparameters.epoch: unknown key; valid: r_max, num_channels"):
        TrainCommitteeMaker(hyperparameters={"epoch": 3})
    with pytest.raises(ValueError, match=r"unknown learner kind 'bogus'"):
        TrainCommitteeMaker(learner="bogus")
    assert TrainCommitteeMaker(uncertainty="shallow").learner == ShallowMaceLearner()


def test_from_settings_resolves_the_foundation_files_against_the_campaign_folder(tmp_path):
    settings = LearnerSettings(kind="mace-finetune", foundation={"path": "f.model", "mode": "multihead",
                                                                 "replay": "r.xyz"})
    maker = TrainCommitteeMaker.from_settings(settings, tmp_path)
    assert maker.hp.foundation.path == str(tmp_path / "f.model") and maker.hp.foundation.replay == str(tmp_path / "r.xyz")
    assert settings.hyperparameters.foundation.path == "f.model"  # the settings are data: left as they are
    assert TrainCommitteeMaker.from_settings(settings).hp.foundation.path == "f.model"
    with pytest.raises(ValueError, match=r"foundation model file not found: .*f.model"):
        maker.check_elements(["Cu"])


def test_learner_settings_validate_the_kinds_hyperparameters_and_shorthands():
    cfg = load_config({**BASE, "learner": {"kind": "mace-finetune", "foundation": "f.model"}})
    assert cfg.learner.hyperparameters.foundation.path == "f.model"
    cases = {
        "foundation: only learner kind mace-finetune takes a foundation file, not chgnet-finetune":
            {"kind": "chgnet-finetune", "foundation": "f.model"},
        "learner: learner kind mace-finetune needs foundation": {"kind": "mace-finetune"},
        r"learner.hyperparameters.r_max: unknown key; valid: pretrained, epochs":
            {"kind": "chgnet-finetune", "hyperparameters": {"r_max": 5}},
        r"learner.hyperparameters.epochs: Input should be greater than or equal to 1": {"hyperparameters": {"epochs": 0}},
        "learner.colour: unknown key": {"colour": "red"},
    }
    for message, learner in cases.items():
        with pytest.raises(ValueError, match=message):
            load_config({**BASE, "learner": learner})


def test_a_learner_without_a_pretrained_model_has_no_zero_shot_start():
    with pytest.raises(ValueError, match=r"learner kind mace has no pretrained model for initial.method"):
        foundation_calculator("mace", {})


def test_the_how_to_page_shows_the_toy_learner():
    page = (ROOT / "docs" / "learners.md").read_text()
    section = page[page.index("## How to add a learner"):]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    toy = (ROOT / "tests" / "toy_learner.py").read_text()
    assert code.strip() == toy[toy.index("from __future__"):].strip()
