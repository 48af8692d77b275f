from pathlib import Path

import pytest

from almat.campaign import CampaignConfig, ConfigError, load_config
from almat.campaign.fingerprint import fingerprint_data

ROOT = Path(__file__).resolve().parents[2]
BASE = {"name": "t", "structures": [{"bulk": {"name": "Cu", "cubic": True}}]}


def test_demo_workflow_config_loads():
    cfg = load_config(ROOT / "workflows" / "cu_emt.yaml")
    assert cfg.name == "cu-emt" and cfg.learner.n_models == 4
    assert cfg.oracle.calculator.spec().path == "ase.calculators.emt.EMT"
    (structure,) = cfg.load_structures()
    assert len(structure) == 32


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"sampler\.temprature: unknown key"):
        load_config({**BASE, "sampler": {"temprature": [300]}})
    with pytest.raises(ConfigError, match=r"learner\.hyperparameters\.epoch: unknown key"):
        load_config({**BASE, "learner": {"hyperparameters": {"epoch": 3}}})


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match="lo < hi"):
        load_config({**BASE, "sampler": {"trust_lo": 0.5, "trust_hi": 0.1}})
    with pytest.raises(ConfigError, match="unknown selection policy 'best'"):
        load_config({**BASE, "selection": {"policy": "best"}})
    with pytest.raises(ConfigError, match="temperatures must be > 0"):
        load_config({**BASE, "sampler": {"temperatures": [-5]}})


def test_calculator_that_cannot_be_imported():
    bad = {**BASE, "oracle": {"calculator": {"module": "no_such_pkg.calc", "class": "X"}}}
    with pytest.raises(ConfigError, match="cannot import calculator module 'no_such_pkg.calc'"):
        load_config(bad)


def test_structure_file_that_cannot_be_read(tmp_path):
    junk = tmp_path / "junk.cif"
    junk.write_text("this is not a CIF\n")
    cfg = load_config({**BASE, "structures": [{"file": str(junk)}]})
    with pytest.raises(ConfigError, match="cannot read structure file"):
        cfg.load_structures()
    cfg = load_config({**BASE, "structures": [{"file": str(tmp_path / "missing.cif")}]})
    with pytest.raises(ConfigError, match="not found"):
        cfg.load_structures()


def test_relative_structure_paths_start_at_the_yaml(tmp_path):
    from ase.build import bulk
    from ase.io import write

    write(tmp_path / "cu.cif", bulk("Cu", "fcc", a=3.6, cubic=True))
    (tmp_path / "c.yaml").write_text("name: rel\nstructures:\n  - file: cu.cif\n    supercell: [2, 1, 1]\n")
    (s,) = load_config(tmp_path / "c.yaml").load_structures()
    assert len(s) == 8


def test_fingerprint_ignores_stopping_settings():
    a = CampaignConfig.model_validate(BASE)
    b = CampaignConfig.model_validate({**BASE, "convergence": {"max_iterations": 3}})
    c = CampaignConfig.model_validate({**BASE, "sampler": {"steps": 10}})
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_invalid_yaml_and_name(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="name"):
        load_config({**BASE, "name": "has space"})


def test_convergence_rule_settings_are_checked():
    base = {"name": "x", "structures": [{"bulk": {"name": "Cu"}}]}
    cfg = load_config(base)
    assert cfg.convergence.rule == "calibrated" and cfg.convergence.calibration_samples >= 2
    with pytest.raises(ConfigError, match="convergence.calibration_coverage"):
        load_config({**base, "convergence": {"calibration_coverage": 1.0}})
    with pytest.raises(ConfigError, match="calibration_samples >= 2"):
        load_config({**base, "convergence": {"calibration_samples": 0}})
    # DP-GEN's accurate-ratio rule can do without held-out labels
    cfg = load_config({**base, "convergence": {"rule": "accurate_ratio", "calibration_samples": 0}})
    assert cfg.convergence.rule == "accurate_ratio"
    with pytest.raises(ConfigError, match="convergence.rule"):
        load_config({**base, "convergence": {"rule": "conformal"}})


def test_single_stage_syntax_is_one_stage_and_keeps_its_fingerprint():
    cfg = load_config(ROOT / "workflows" / "cu_emt.yaml")
    (stage,) = cfg.sampler.stage_list()
    assert stage.ensemble == "nvt" and stage.temperatures == [300, 800] and stage.trust_lo == 0.06
    assert stage.pressures_bar() == [None] and stage.systems is None  # every start structure
    # the sampler section fingerprints as before stages existed: stored campaigns resume (drive: the demo's own
    # setting since issue 24, fingerprinted only where it is not the default)
    assert sorted(k for k in fingerprint_data(cfg)["sampler"] if k != "drive") == sorted([
        "temperatures", "steps", "timestep_fs", "friction_per_fs", "sample_every", "trust_lo", "trust_hi",
        "stop_after_failed", "min_distance_factor", "seed"])


def test_stages_take_what_they_leave_out_from_the_sampler():
    cfg = load_config({**BASE, "sampler": {"trust_lo": 0.1, "steps": 50, "stages": [
        {"name": "cold", "temperatures": [300]},
        {"name": "hot", "ensemble": "npt", "temperatures": [900], "pressures": [2], "pressure_unit": "GPa",
         "systems": [{"structures": [0], "trust_hi": 0.6}], "adaptive_lo": {"fraction": 0.2},
         "convergence": {"max_iterations": 2}}]}})
    cold, hot = cfg.sampler.stage_list()
    assert (cold.name, cold.steps, cold.trust_lo, cold.ensemble) == ("cold", 50, 0.1, "nvt")
    assert hot.pressures_bar() == [2e4] and hot.trust(hot.systems[0]).hi == 0.6 and hot.steps == 50
    assert hot.convergence == {"max_iterations": 2}
    again = CampaignConfig.from_dict(cfg.as_dict())  # as jobs get it
    assert again.sampler.stage_list() == cfg.sampler.stage_list() and again.fingerprint() == cfg.fingerprint()
    workflow = load_config(ROOT / "workflows" / "li6ps5cl_npt.yaml")
    assert [(s.name, s.ensemble) for s in workflow.sampler.stage_list()] == [("nvt", "nvt"), ("npt", "npt")]


@pytest.mark.parametrize("sampler, message", [
    ({"ensemble": "npt", "pressures": [1e5], "pressure_unit": "GPa"},
     r"sampler: pressure 100000 GPa is implausible for unit GPa .*did you mean bar\?"),
    ({"ensemble": "npt", "pressures": [1.0]}, "pressures need their unit: pressure_unit: bar or GPa"),
    ({"ensemble": "npt"}, "ensemble npt needs pressures"),
    ({"pressures": [1.0], "pressure_unit": "bar"}, "pressures need an npt ensemble"),
    ({"ensemble": "nve"}, r"sampler\.ensemble: unknown ensemble 'nve'; valid: nvt, npt, npt_aniso"),
    ({"stages": [{"systems": []}]}, "sampler: stages.0: a stage needs at least one system"),
    ({"stages": [{}, {"trust_lo": 0.5, "trust_hi": 0.2}]}, "stages.1: trust levels need lo < hi"),
    ({"stages": [{"systems": [{"structures": [0], "trust_lo": 0.4}]}]}, "stages.0: systems.0: .*lo < hi"),
    ({"stages": [{"ensemble": "npt_tri"}]}, r"sampler\.stages\.0\.ensemble: unknown ensemble 'npt_tri'"),
    ({"stages": [{"convergence": {"max_iteration": 2}}]}, r"stages\.0\.convergence\.max_iteration: unknown key"),
    ({"adaptive_lo": {"number": 3, "fraction": 0.1}}, "exactly one of 'number' or 'fraction'"),
    ({"systems": [{"structures": [0], "query": {"filters": {}}}]}, "exactly one of 'structures' or 'query'"),
])
def test_bad_stages_are_one_line_errors(sampler, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config({**BASE, "sampler": sampler})
    assert "\n" not in str(err.value)


def test_a_system_beyond_the_start_structures_is_refused():
    from almat.campaign import CampaignMaker

    cfg = {**BASE, "sampler": {"stages": [{"systems": [{"structures": [0, 2]}]}]}}
    with pytest.raises(ConfigError, match=r"sampler.stages.0.systems.0.structures: \[2\] out of range"):
        CampaignMaker.from_config(cfg)
