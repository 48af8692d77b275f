"""Campaign fingerprints do not change: the hex strings below were computed at commit 578e19a, before the
settings were split into ``almat.campaign.settings`` and the oracle section became a union of kinds, for every
workflow file and for MD (ASE, VASP, CP2K oracles; each learner kind; stages), pool and NFT configs, among them
those of tests/campaign/test_pool.py and test_nft.py. A stored campaign resumes only with its fingerprint."""

from pathlib import Path

import pytest

from almat.campaign.config import load_config
from almat.campaign.fingerprint import FINGERPRINT_VERSION, KEEP_OLD
from almat.oracle.settings import AseOracleSettings, Cp2kOracleSettings, VaspOracleSettings

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"

CU = {"name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True}
MD = {"name": "fp-md", "structures": [{"bulk": CU, "supercell": [2, 2, 2]}], "learner": {"n_models": 2}}
HP = {"num_channels": 8, "epochs": 10, "warm_start_epochs": 5, "batch_size": 4, "eval_every": 5}
POOL = {"kind": "pool", "name": "cu-pool-committee",
        "pool": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}, "supercell": [2, 2, 2],
                  "perturb": {"n": 40, "rattle_std": 0.05, "max_strain": 0.03, "seed": 1}}],
        "learner": {"n_models": 2, "hyperparameters": HP}, "acquisition": "committee",
        "n_init": 6, "budget": 4, "n_test": 8, "max_iterations": 2, "seed": 5}


def _nft(mode):
    chunks = {"mode": mode, "cutoff": 4.5, "percentile": 95, "max_chunks": 3, "vacuum": 5.0}
    if mode == "periodic":
        chunks["cell"] = [10.0, 10.0, 10.0]
    return {"kind": "nft", "name": f"nft-{mode}",
            "target": {"bulk": CU, "supercell": [3, 3, 3], "rattle_std": 0.1, "vacancies": 1, "seed": 0,
                       "evaluate_with_oracle": True},
            "structures": [{"bulk": CU, "supercell": [2, 2, 2]}],
            "initial": {"n_per_structure": 6, "rattle_std": 0.05, "max_strain": 0.02},
            "learner": {"n_models": 2, "hyperparameters": {"num_channels": 8, "r_max": 4.0, "radial_mlp": [16],
                                                           "epochs": 8, "warm_start_epochs": 4, "batch_size": 4,
                                                           "eval_every": 4}},
            "chunks": chunks, "convergence": {"stop_delta": 0.001, "max_iterations": 2, "steps_not_improved": 2}}


CP2K = {"user_input_settings": {"GLOBAL": {"PRINT_LEVEL": "LOW"}}, "kpoints": None}

CASES = {
    "md": MD,
    "md_ase_kwargs": {**MD, "oracle": {"calculator": {"module": "ase.calculators.emt", "class": "EMT",
                                                      "kwargs": {"asap_cutoff": True}}, "compute_stress": False}},
    "md_ase_kind": {**MD, "oracle": {"kind": "ase", "calculator": {"module": "ase.calculators.emt", "class": "EMT"}}},
    "md_ase_empty_cp2k": {**MD, "oracle": {"cp2k": {}, "incar": {}}},
    "md_vasp": {**MD, "oracle": {"kind": "vasp"}},
    "md_vasp_incar": {**MD, "oracle": {"kind": "vasp", "incar": {"ENCUT": 520, "ISPIN": 2}},
                      "prerelax": {"enabled": True}},
    "md_cp2k": {**MD, "oracle": {"kind": "cp2k"}},
    "md_cp2k_settings": {**MD, "oracle": {"kind": "cp2k", "cp2k": CP2K}},
    "md_selection_options": {**MD, "selection": {"policy": "diverse", "options": {"min_distance": 0.2},
                                                 "max_select": 4}},
    "md_shallow": {**MD, "learner": {"uncertainty": "shallow", "n_heads": 3}},
    "md_finetune": {**MD, "learner": {"kind": "mace-finetune", "foundation": "foundation.model", "n_models": 2}},
    "md_finetune_multihead": {**MD, "learner": {"kind": "mace-finetune", "n_models": 2, "foundation": {
        "path": "foundation.model", "mode": "multihead", "replay": "replay.xyz"}}},
    "md_chgnet": {**MD, "learner": {"kind": "chgnet-finetune", "n_models": 2}},
    "md_foundation_md": {**MD, "initial": {"method": "foundation-md", "md_steps": 50}},
    "md_npt_stages": {**MD, "sampler": {"walkers_per_condition": 2, "stages": [
        {"name": "nvt", "ensemble": "nvt", "temperatures": [300]},
        {"name": "npt", "ensemble": "npt", "temperatures": [600], "pressures": [1.0], "pressure_unit": "GPa",
         "adaptive_lo": {"fraction": 0.1}, "convergence": {"max_iterations": 2}}]}},
    "md_convergence_changed": {**MD, "convergence": {"max_iterations": 3, "rule": "accurate_ratio"},
                               "description": "not fingerprinted"},
    "pool_committee": POOL,
    "pool_random": {**POOL, "name": "cu-pool-random", "acquisition": "random"},
    "pool_weighted_vasp": {**POOL, "acquisition": {"name": "weighted", "options": {}, "seed": 3},
                           "oracle": {"kind": "vasp", "incar": {"ENCUT": 500}}, "total_budget": 20},
    "pool_query": {"kind": "pool", "name": "q", "pool": [{"query": {"collection": "labels",
                                                                    "filters": {"campaign": "other"}}}]},
    "nft_cluster": _nft("cluster"),
    "nft_periodic": _nft("periodic"),
    "nft_small": {"kind": "nft", "name": "nft-cfg", "target": {"bulk": CU, "supercell": [3, 3, 3]},
                  "structures": [{"bulk": CU}], "learner": {"hyperparameters": {"r_max": 4.0}},
                  "chunks": {"cutoff": 4.5}},
}

#: fingerprints at commit 578e19a
WORKFLOW_FINGERPRINTS = {
    "cu_emt": "908ffe9ee0568d94",  # issue 24: the demo explores with sampler.drive: first (was bc78be2a133183a0)
    "cu_pool_emt": "c502b1fd5e65a7b0",
    "cu_nft_emt": "6b5a35f0e7473a97",
    "li6ps5cl_npt": "173c481b8294d951",
    "cu_emt_deepmd": "1841dc60fd333832",  # added with the DeePMD learner (issue 22)
}
EXPECTED = {
    "md": "8cc0371c4712fc75",
    "md_ase_kwargs": "c8255b26261acb4b",
    "md_ase_kind": "8cc0371c4712fc75",
    "md_ase_empty_cp2k": "8cc0371c4712fc75",
    "md_vasp": "568715c10467f196",
    "md_vasp_incar": "d77fa78d69a55489",
    "md_cp2k": "665f743a145a0a5a",
    "md_cp2k_settings": "3a2d64859bdfcb50",
    "md_selection_options": "8b04c6be22ca7a54",
    "md_shallow": "6a6e52fe1e2d18e3",
    "md_finetune": "f5a39d8cfc67b4fd",
    "md_finetune_multihead": "d1be482dc6da9699",
    "md_chgnet": "c65337875dd0b54f",
    "md_foundation_md": "d1bda2a0e6cb90fa",
    "md_npt_stages": "4d4b172d41617b8d",
    "md_convergence_changed": "8cc0371c4712fc75",
    "pool_committee": "b0ba693153c549f9",
    "pool_random": "7b319dfc92f53c1e",
    "pool_weighted_vasp": "1ca497d83c55a0fe",
    "pool_query": "76a6c933122801f6",
    "nft_cluster": "24f35f3d02d92ed1",
    "nft_periodic": "707134a3e18fab1f",
    "nft_small": "a80af86c80745b4c",
}

#: oracle sections as campaigns of commit 578e19a stored them (one section carrying every kind's keys)
_EMT = {"module": "ase.calculators.emt", "class": "EMT", "kwargs": {}}
STORED_ORACLES = {
    "md_vasp_incar": {"kind": "vasp", "calculator": _EMT, "compute_stress": True, "incar": {"ENCUT": 520, "ISPIN": 2},
                      "cp2k": {}},
    "md_cp2k_settings": {"kind": "cp2k", "calculator": _EMT, "compute_stress": True, "incar": {}, "cp2k": CP2K},
    "md_ase_kwargs": {"kind": "ase", "calculator": {**_EMT, "kwargs": {"asap_cutoff": True}}, "compute_stress": False,
                      "incar": {}, "cp2k": {}},
}


def test_fingerprint_module_is_versioned_and_lists_its_rules():
    assert FINGERPRINT_VERSION == 1
    assert all(rule.__doc__ for rule in KEEP_OLD)


@pytest.mark.parametrize("name", sorted(WORKFLOW_FINGERPRINTS))
def test_workflow_fingerprints_are_unchanged(name):
    assert load_config(WORKFLOWS / f"{name}.yaml").fingerprint() == WORKFLOW_FINGERPRINTS[name]


def test_every_workflow_file_is_covered():
    assert sorted(p.stem for p in WORKFLOWS.glob("*.yaml")) == sorted(WORKFLOW_FINGERPRINTS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_fingerprints_are_unchanged(name):
    assert load_config(CASES[name]).fingerprint() == EXPECTED[name]


def test_oracle_kinds_load_as_their_own_sections():
    assert isinstance(load_config(CASES["md"]).oracle, AseOracleSettings)
    vasp = load_config(CASES["md_vasp_incar"]).oracle
    assert isinstance(vasp, VaspOracleSettings) and vasp.incar == {"ENCUT": 520, "ISPIN": 2}
    cp2k = load_config(CASES["md_cp2k_settings"]).oracle
    assert isinstance(cp2k, Cp2kOracleSettings) and cp2k.cp2k == CP2K
    assert not hasattr(vasp, "calculator") and not hasattr(cp2k, "incar")


@pytest.mark.parametrize("name", sorted(STORED_ORACLES))
def test_stored_configs_of_the_former_oracle_section_reload_with_their_fingerprints(name):
    config = load_config({**CASES[name], "oracle": STORED_ORACLES[name]})
    assert config.fingerprint() == EXPECTED[name]
    again = load_config(config.model_dump(mode="json", by_alias=True))  # as a campaign document stores it
    assert again.fingerprint() == EXPECTED[name] and again == config


def test_keys_of_another_oracle_kind_are_refused_naming_the_key():
    from almat.campaign.config import ConfigError

    with pytest.raises(ConfigError, match=r"oracle\.calculator: unknown key"):
        load_config({**MD, "oracle": {"kind": "vasp", "calculator": {"module": "ase.calculators.lj",
                                                                      "class": "LennardJones"}}})
    with pytest.raises(ConfigError, match=r"oracle\.incar: unknown key"):
        load_config({**MD, "oracle": {"incar": {"ENCUT": 520}}})
    with pytest.raises(ConfigError, match=r"oracle\.kind: Input should be 'ase', 'vasp' or 'cp2k'"):
        load_config({**MD, "oracle": {"kind": "gaussian"}})
    with pytest.raises(ConfigError, match=r"oracle\.cp2k: Input should be a valid dictionary"):
        load_config({**MD, "oracle": {"kind": "cp2k", "cp2k": 3}})
