from pathlib import Path

import pytest

from almat.campaign import CampaignConfig, ConfigError, load_config

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
