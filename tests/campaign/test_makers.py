"""The campaign Maker is built from Makers, as in atomate2: a user's own atomate2 Maker from Python, an
update of a built flow with ``update_maker_kwargs``, and actors that are not Makers refused at build time."""

import dataclasses
from types import SimpleNamespace
from typing import Literal

import pytest
from atomate2.vasp.jobs.core import StaticMaker
from pymatgen.io.vasp.sets import MPStaticSet

from almat.campaign import CampaignMaker, ConfigError
from almat.campaign.config import CampaignConfig
from almat.campaign.jobs import all_jobs, label_batch
from almat.campaign.kinds import KINDS
from almat.campaign.md import MdExplorer
from almat.oracle.jobs import AseOracleMaker
from almat.oracle.registry import ORACLES, label_maker
from almat.oracle.relax import AseRelaxMaker
from almat.oracle.settings import ORACLE_SETTINGS
from almat.oracle.vasp import VaspStaticOracleMaker
from almat.schemas import StructureDoc, StructureSource

CONFIG = {"name": "cu-vasp", "structures": [{"bulk": {"name": "Cu", "cubic": True}}], "oracle": {"kind": "vasp"},
          "learner": {"n_models": 2}}


def _incar(oracle) -> dict:
    return oracle.vasp_maker.input_set_generator.user_incar_settings


def test_own_atomate2_maker_and_update_maker_kwargs_reach_every_oracle_job():
    oracle = VaspStaticOracleMaker(vasp_maker=StaticMaker(
        input_set_generator=MPStaticSet(user_incar_settings={"ENCUT": 600})))
    maker = CampaignMaker.from_config(CONFIG, oracle=oracle)
    default = CampaignMaker.from_config(CONFIG)
    assert maker.oracle_fingerprint != default.oracle_fingerprint  # the labels say which ENCUT ran
    flow = maker.make()
    flow.update_maker_kwargs({"_set": {"input_set_generator->user_incar_settings->EDIFF": 1e-6}},
                             dict_mod=True, class_filter=StaticMaker)
    jobs = {j.name: j for j in all_jobs(flow)}
    for name in ("label initial", "label it0", "label calibration it0"):
        assert _incar(jobs[name].function_args[1]) == {"ENCUT": 600, "EDIFF": 1e-6}, name
    # the next iterations are built by decide's Maker, which got the update too
    campaign = jobs["decide it0"].function_args[0]
    assert isinstance(campaign, CampaignMaker) and _incar(campaign.oracle) == {"ENCUT": 600, "EDIFF": 1e-6}
    nxt = {j.name: j for j in all_jobs(campaign.iteration_flow(1, ["a", "b"], ["m0", "m1"]))}
    assert _incar(nxt["label it1"].function_args[1])["EDIFF"] == 1e-6
    # and the atomate2 static job that a label job makes runs with both settings
    doc = StructureDoc(structure=campaign.config.load_structures()[0], source=StructureSource.md)
    (static, parse) = label_batch.original([doc], campaign.oracle, "cu-vasp", 1).replace.jobs[0].jobs
    assert static.name == "static" and static.maker.input_set_generator.user_incar_settings == {
        "ENCUT": 600, "EDIFF": 1e-6}


def test_the_incar_section_of_a_campaign_file_reaches_the_input_sets():
    maker = CampaignMaker.from_config({**CONFIG, "oracle": {"kind": "vasp", "incar": {"ENCUT": 520}},
                                       "prerelax": {"enabled": True}})
    assert _incar(maker.oracle) == {"ENCUT": 520} and _incar(maker.relax) == {"ENCUT": 520}
    assert CampaignMaker.from_config(CONFIG).config.fingerprint() != maker.config.fingerprint()


def test_actors_that_are_not_makers_are_refused_when_the_campaign_is_built():
    with pytest.raises(ConfigError, match="oracle: dict is not a jobflow Maker"):
        CampaignMaker.from_config(CONFIG, oracle={"kind": "vasp"})
    with pytest.raises(ConfigError, match="trainer: str is not a jobflow Maker"):
        CampaignMaker.from_config(CONFIG, trainer="mace")
    pool = {"kind": "pool", "name": "p", "pool": [{"bulk": {"name": "Cu"}}]}
    with pytest.raises(ConfigError, match="explorer: a pool campaign needs a PoolExplorer"):
        CampaignMaker.from_config(pool, explorer=CampaignMaker.from_config(CONFIG).explorer)


def test_md_explorer_makes_one_job_for_all_walkers_without_running():
    cfg = {"name": "cu-md", "structures": [{"bulk": {"name": "Cu", "cubic": True}},
                                           {"bulk": {"name": "Cu", "cubic": True}, "supercell": [2, 1, 1]}],
           "sampler": {"temperatures": [300, 900], "steps": 20}, "learner": {"n_models": 2}}
    maker = CampaignMaker.from_config(cfg)
    assert isinstance(maker.explorer, MdExplorer)
    train = maker.trainer.make(["a", "b"], campaign="cu-md", iteration=3)
    jobs, exploration = maker.explorer.explore(maker, 3, train.output, ["a", "b"], None)
    md = [j for j in jobs if j.name.startswith("explore")]
    assert [j.name for j in md] == ["explore it3 w0-3"]  # one job advances the 4 walkers together
    walkers = md[0].function_args[1]
    assert [(w["system"], w["temperature"], w["steps"]) for w in walkers] == [
        ("s0", 300, 20), ("s0", 900, 20), ("s1", 300, 20), ("s1", 900, 20)]
    assert len({w["seed"] for w in walkers}) == 4  # each walker its own seed
    assert jobs[-1].name == "select it3" and exploration.uuid == jobs[-1].uuid
    assert {j.metadata["almat_role"] for j in md} == {"explore"} and jobs[-1].metadata["almat_role"] == "select"


class ToyConfig(CampaignConfig):
    """An MD campaign under a kind name of its own."""

    kind: Literal["toy"] = "toy"


class ToyExplorer(MdExplorer):
    kind = "toy"


def test_a_new_campaign_kind_is_one_explorer_and_one_kinds_entry(monkeypatch):
    monkeypatch.setitem(KINDS, "toy", dataclasses.replace(KINDS["md"], name="toy", config=f"{__name__}:ToyConfig",
                                                          explorer=f"{__name__}:ToyExplorer"))
    maker = CampaignMaker.from_config({**CONFIG, "kind": "toy", "oracle": {}})
    assert isinstance(maker.config, ToyConfig) and type(maker.explorer) is ToyExplorer
    assert maker.explorer.selection == maker.config.selection  # built from the config, as an MD explorer is
    assert "decide it0" in {j.name for j in all_jobs(maker.make())}
    with pytest.raises(ConfigError, match="kind: 'toys' is not a campaign kind; valid: md, pool, nft, toy"):
        CampaignMaker.from_config({**CONFIG, "kind": "toys"})


def test_oracle_makers_come_from_the_registry_of_oracle_kinds():
    assert set(ORACLES) == set(ORACLE_SETTINGS) == {"ase", "vasp", "cp2k"}
    lj = {"module": "ase.calculators.lj", "class": "LennardJones"}
    ase = CampaignMaker.from_config({**CONFIG, "oracle": {"calculator": lj, "compute_stress": False},
                                     "prerelax": {"enabled": True, "fmax": 0.1}})
    assert isinstance(ase.oracle, AseOracleMaker) and ase.oracle.calculator.path == "ase.calculators.lj.LennardJones"
    assert not ase.oracle.compute_stress and isinstance(ase.relax, AseRelaxMaker) and ase.relax.fmax == 0.1
    assert isinstance(CampaignMaker.from_config(CONFIG).oracle, VaspStaticOracleMaker)
    with pytest.raises(ConfigError, match="unknown oracle kind 'gaussian'; valid: ase, vasp, cp2k"):
        label_maker(SimpleNamespace(kind="gaussian"))
