"""VASP fingerprints record what ran, and labels store the free energy (real VASP outputs, see
tests/test_data/vasp/README.md). TaskDocs are built with emmet from the reference output folders."""

from __future__ import annotations

import copy
import gzip
import re
import warnings
from pathlib import Path

import pytest

from almat.oracle.vasp import labels_from_task, settings_from_task, vasp_fingerprint

pytest.importorskip("emmet.core")
VASP = Path(__file__).parents[1] / "test_data" / "vasp"

# case: (ENCUT, ISPIN, functional) as VASP ran them (vasprun.xml's <parameters>)
CASES = {
    "NaCl_static": (500.0, 1, "PBE"),
    "LiCl_displaced_static": (700.0, 1, "PBEsol"),
    "FeO_relax": (520.0, 2, "PBE+U"),
    "Al_large_sigma": (680.0, 2, "R2SCAN"),
}


def _task(case: str) -> dict:
    from emmet.core.tasks import TaskDoc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TaskDoc.from_directory(VASP / case / "outputs").model_dump()


def _eentro(case: str) -> float:
    """The last smearing entropy term T*S that the run's OUTCAR prints."""
    text = gzip.open(VASP / case / "outputs" / "OUTCAR.gz", "rt", errors="replace").read()
    return float(re.findall(r"EENTRO\s*=\s*(\S+)", text)[-1])


@pytest.mark.parametrize("case", CASES)
def test_settings_are_what_vasp_used_even_where_the_incar_omits_them(case):
    """None of the real runs omits ENCUT in its INCAR; dropping ENCUT, ISPIN and GGA from the TaskDoc's
    INCAR makes it one (vasprun.xml's <parameters>, what VASP used, is untouched): the settings must not
    change, and ENCUT is never null."""
    encut, ispin, functional = CASES[case]
    task = _task(case)
    omitted = copy.deepcopy(task)
    incar = omitted["calcs_reversed"][0]["input"]["incar"]
    for tag in ("ENCUT", "ISPIN", "GGA"):
        incar.pop(tag, None)
    for t in (task, omitted):
        settings = settings_from_task(t)
        assert (settings["ENCUT"], settings["ISPIN"], settings["functional"]) == (encut, ispin, functional)
        actual = labels_from_task(t)[-1].oracle_settings["actual"]
        assert actual["ENCUT"] == encut and actual["used"]["ENCUT"] == encut and actual["used"]["ISPIN"] == ispin
        assert actual["energy"] == "e_fr_energy"
    assert vasp_fingerprint(settings_from_task(omitted)) == vasp_fingerprint(settings_from_task(task))
    assert "ENCUT" not in labels_from_task(omitted)[-1].oracle_settings["actual"]["incar"]  # the INCAR as written


@pytest.mark.parametrize("case", CASES)
def test_labels_store_the_free_energy_not_the_taskdoc_final_energy(case):
    """The label energy is each ionic step's e_fr_energy (TOTEN), the energy whose derivatives are the
    forces. The TaskDoc's final energy is energy(sigma->0): the same only where the smearing entropy is
    zero (NaCl, LiCl, FeO: EENTRO = 0), not for the Al run (EENTRO = -2.77 meV)."""
    task = _task(case)
    steps = task["calcs_reversed"][0]["output"]["ionic_steps"]
    label = labels_from_task(task)[-1]
    assert label.ok and label.energy == pytest.approx(steps[-1]["e_fr_energy"], abs=1e-8)
    final = task["output"]["energy"]
    if _eentro(case) == 0:
        assert label.energy == pytest.approx(final, abs=1e-8)
    else:
        assert case == "Al_large_sigma"
        assert label.energy == pytest.approx(-3.74613778, abs=1e-8)  # OUTCAR: free  energy   TOTEN
        assert final == pytest.approx(-3.74544492, abs=1e-8)  # OUTCAR: energy(sigma->0)
        assert abs(label.energy - final) > 5e-4
