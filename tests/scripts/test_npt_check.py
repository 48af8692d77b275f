"""scripts/npt_check.py: the oracle's NPT reference is made once per structure and MD settings, then read back."""

import json

import pytest
from ase.build import bulk

from almat.oracle.calculators import CalculatorSpec
from almat.sampler.md import ExplorationSettings
from project_module import load_module



def _script():
    return load_module("scripts/npt_check.py")


def test_the_oracle_reference_is_cached_per_structure_and_settings(tmp_path):
    npt = _script()
    emt = CalculatorSpec("ase.calculators.emt", "EMT")
    cell = bulk("Cu", cubic=True)
    settings = ExplorationSettings(temperature=600.0, steps=40, timestep_fs=2.0, sample_every=10, ensemble="npt",
                                   pressure_bar=1.0, seed=3)
    made = npt.oracle_reference(emt, cell, settings, 40, tmp_path)
    assert made["oracle_md_steps_done"] == 40 and not made["oracle_md_exploded"]
    assert made["oracle_md_density_mean"] == pytest.approx(npt.density(cell), rel=0.1)  # Cu near 8.9 g/cm³
    (path,) = tmp_path.glob("Cu4_*.json")
    again = npt.oracle_reference(emt, cell, settings, 40, tmp_path)
    assert again["oracle_md_cached"] == str(path)
    assert again["oracle_md_density_mean"] == made["oracle_md_density_mean"]
    # another seed or another length is another run, in a file of its own
    other = npt.oracle_reference(emt, cell, settings.__class__(**{**settings.__dict__, "seed": 4}), 40, tmp_path)
    assert "oracle_md_cached" not in other and len(list(tmp_path.glob("Cu4_*.json"))) == 2
    assert json.loads(path.read_text())["oracle_md_ps"] == pytest.approx(0.08)
