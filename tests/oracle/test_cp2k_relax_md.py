"""CP2K pre-relaxation (atomate2's ``RelaxMaker``/``CellOptMaker``) and the CP2K oracle's own MD (atomate2's
``MDMaker``): their frames are labels of the static oracle (same fingerprint), in eV, eV/Å and ASE's stress.

Fast tests parse real reference runs in tests/test_data/cp2k/ (``si8_relax``, ``si8_md``: tests/test_data/cp2k/
generate.py); the slow ones run Debian's CP2K with the tiny settings ``SMALL`` and skip where it is not installed.
"""

from __future__ import annotations

import gzip
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase.units import Bohr, GPa, Hartree
from jobflow import run_locally
from test_cp2k import SMALL, _oracle, _printed, cp2k_env, si8  # noqa: F401 - cp2k_env is a fixture

from almat.campaign import CampaignMaker, ConfigError
from almat.oracle.cp2k import read_cp2k_frames
from almat.oracle.cp2k_md import Cp2kMdMaker, cp2k_md_labels, cp2k_md_maker
from almat.oracle.cp2k_relax import Cp2kRelaxMaker, cp2k_relax_labels, cp2k_relax_maker
from almat.oracle.relax import RelaxDoc
from almat.schemas import LabelDoc, StructureDoc, StructureSource, to_structure
from almat.stores import CampaignDB

pytest.importorskip("atomate2")
CP2K = Path(__file__).parents[1] / "test_data" / "cp2k"


def _copy(case: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(CP2K / case, tmp_path / case))


def _task(folder: Path):
    from atomate2.cp2k.schemas.task import TaskDocument

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TaskDocument.from_directory(folder)


def _text(folder: Path, name: str) -> str:
    with gzip.open(folder / name, "rt") as f:
        return f.read()


def _xyz(folder: Path, name: str) -> list[tuple[float, np.ndarray]]:
    """(E in Ha, 8x3 values) of each frame of a CP2K xyz file, as printed."""
    lines = _text(folder, name).splitlines()
    return [(float(lines[k + 1].split("E =")[1]), np.array([r.split()[1:4] for r in lines[k + 2:k + 10]], float))
            for k in range(0, len(lines), 10)]


def _stress_blocks(folder: Path) -> list[np.ndarray]:
    """Every ``STRESS| Analytical stress tensor [GPa]`` block of the main output (one per force evaluation)."""
    text = _text(folder, "cp2k.out.gz")
    return [np.array([[float(x) for x in re.findall(r"-?[\d.]+E[-+]\d+", row)] for row in block.splitlines()[2:5]])
            for block in text.split("STRESS| Analytical stress tensor [GPa]")[1:]]


def test_relaxation_frames_are_static_labels_in_ev_ev_per_angstrom_and_ase_stress(tmp_path):
    folder = _copy("si8_relax", tmp_path)
    maker = Cp2kRelaxMaker(cp2k_maker=cp2k_relax_maker(SMALL, steps=3, fmax=0.01, relax_cell=False))
    assert maker.fingerprint == _oracle().fingerprint and maker.oracle_name == _oracle().oracle_name
    doc = cp2k_relax_labels.original(_task(folder), to_structure(si8()), maker.settings, trajectory_stride=2,
                                     campaign="c", start_index=0)
    assert isinstance(doc, RelaxDoc) and not doc.converged and doc.n_steps == 3  # stopped at its step limit
    printed, forces = _xyz(folder, "CP2K-pos-1.xyz.gz"), _xyz(folder, "CP2K-frc-1.xyz.gz")
    stresses = _stress_blocks(folder)  # the start's force evaluation, then one per optimisation step
    assert len(printed) == 3 and len(stresses) == 4
    assert len(doc.labels) == 2  # steps 1 and 3 (every 2nd and the last)
    for label, k in zip(doc.labels, (0, 2)):
        assert label.ok and label.oracle_fingerprint == _oracle().fingerprint and label.source == "relaxed"
        assert label.energy == pytest.approx(printed[k][0] * Hartree, abs=1e-6)
        np.testing.assert_allclose(label.structure.cart_coords, printed[k][1], atol=1e-8)  # Å, the input's order
        np.testing.assert_allclose(label.forces, forces[k][1] * Hartree / Bohr, atol=1e-8)
        np.testing.assert_allclose(label.stress, -stresses[k + 1] * GPa, atol=1e-10)
    assert doc.structure == doc.labels[-1].structure and doc.energy == doc.labels[-1].energy
    # the start's forces (the static reference of the same cell) were larger than the relaxed ones
    assert np.abs(doc.labels[-1].forces).max() < np.abs(_printed("si8_static")[1] * Hartree / Bohr).max()


def test_md_frames_are_static_labels_without_the_kinetic_stress(tmp_path):
    folder = _copy("si8_md", tmp_path)
    maker = Cp2kMdMaker(cp2k_maker=cp2k_md_maker(SMALL, temperature=600, steps=6), stride=2, n_frames=4)
    assert maker.fingerprint == _oracle().fingerprint
    labels = cp2k_md_labels.original(_task(folder), to_structure(si8()), maker.settings, stride=2, n_frames=4,
                                     campaign="c")
    printed, forces = _xyz(folder, "CP2K-pos-1.xyz.gz"), _xyz(folder, "CP2K-frc-1.xyz.gz")
    stresses = _stress_blocks(folder)
    assert len(printed) == len(stresses) == 7 and len(labels) == 4  # steps 0, 2, 4, 6
    for label, k in zip(labels, (0, 2, 4, 6)):
        assert label.ok and label.oracle_fingerprint == _oracle().fingerprint and label.source == "md"
        assert label.energy == pytest.approx(printed[k][0] * Hartree, abs=1e-6)
        np.testing.assert_allclose(label.forces, forces[k][1] * Hartree / Bohr, atol=1e-8)
        np.testing.assert_allclose(label.stress, -stresses[k] * GPa, atol=1e-10)
    # step 0 is the start structure: the static reference of the same cell gives the same label
    energy, static_forces, static_stress = _printed("si8_static")
    assert labels[0].energy == pytest.approx(energy * Hartree, abs=1e-3)
    np.testing.assert_allclose(labels[0].forces, static_forces * Hartree / Bohr, atol=5e-3)
    np.testing.assert_allclose(labels[0].stress, -static_stress * GPa, atol=1e-4)
    # MOTION's .stress file (bar) adds the atoms' kinetic stress: at 600 K on 8 atoms it differs by ~0.1-1 GPa
    moving = np.loadtxt(gzip.open(folder / "CP2K-1.stress.gz", "rt"))[0, 2:].reshape(3, 3) * 1e-4
    assert np.abs(moving - stresses[0]).max() > 0.05
    # fps picks frames too, the last one first
    two = cp2k_md_labels.original(_task(folder), to_structure(si8()), maker.settings, stride=1, n_frames=2,
                                  method="fps")
    assert len(two) == 2 and two[-1].energy == pytest.approx(printed[-1][0] * Hartree, abs=1e-6)


def test_a_failed_cp2k_run_gives_one_failed_label_and_keeps_the_start(tmp_path):
    start = to_structure(si8())
    settings = _oracle().settings
    doc = cp2k_relax_labels.original(None, start, settings, job_uuid="j1")
    assert not doc.converged and doc.structure == start and doc.n_steps == 0
    assert len(doc.labels) == 1 and not doc.labels[0].ok and "j1" in doc.labels[0].reason
    labels = cp2k_md_labels.original(None, start, settings, job_uuid="j2")
    assert len(labels) == 1 and not labels[0].ok and "CP2K MD job j2 failed" in labels[0].reason


def test_trajectory_with_atoms_in_another_order_is_refused(tmp_path):
    folder = _copy("si8_relax", tmp_path)
    other = to_structure(si8()).copy()
    other.replace(0, "Ge")
    with pytest.raises(ValueError, match="another order than the input"):
        read_cp2k_frames(folder, other)


CAMPAIGN = {"name": "si-cp2k-motion", "oracle": {"kind": "cp2k", "cp2k": SMALL},
            "structures": [{"bulk": {"name": "Si", "crystalstructure": "diamond", "a": 5.43, "cubic": True}}],
            "prerelax": {"enabled": True, "steps": 7, "fmax": 0.1, "relax_cell": False, "trajectory_stride": 3},
            "initial": {"method": "oracle-md", "n_per_structure": 5, "md_steps": 9, "md_stride": 3,
                        "md_temperature": 450, "subsample": "fps", "seed": 4}}


def test_a_cp2k_campaign_with_prerelax_and_oracle_md_builds_at_one_level_of_theory(cp2k_env):
    maker = CampaignMaker.from_config(CAMPAIGN)
    static = _oracle()
    assert isinstance(maker.relax, Cp2kRelaxMaker) and isinstance(maker.oracle_md, Cp2kMdMaker)
    assert maker.relax.fingerprint == maker.oracle_md.fingerprint == maker.oracle.fingerprint == static.fingerprint
    other = Cp2kRelaxMaker(cp2k_maker=cp2k_relax_maker({**SMALL, "cutoff": 120}))  # another level of theory
    assert other.fingerprint != static.fingerprint
    assert maker.relax.trajectory_stride == 3 and (maker.oracle_md.stride, maker.oracle_md.n_frames) == (3, 5)
    assert maker.oracle_md.subsample == "fps" and maker.oracle_md.seed == 4
    structure = to_structure(si8())
    inputs = {name: m.input_set_generator.get_input_set(structure).cp2k_input for name, m in
              (("static", static.cp2k_maker), ("relax", maker.relax.cp2k_maker), ("md", maker.oracle_md.cp2k_maker))}
    # the same FORCE_EVAL (basis, cutoffs, SCF, XC, k-points, mixing): one level of theory
    assert inputs["relax"]["FORCE_EVAL"].get_str() == inputs["static"]["FORCE_EVAL"].get_str()
    assert inputs["md"]["FORCE_EVAL"].get_str() == inputs["static"]["FORCE_EVAL"].get_str()
    relax, md = inputs["relax"].get_str(), inputs["md"].get_str()
    assert re.search(r"RUN_TYPE GEO_OPT", relax) and re.search(r"MAX_ITER 7\n", relax)
    assert float(re.search(r"MAX_FORCE (\S+)", relax).group(1)) == pytest.approx(0.1 / (Hartree / Bohr))
    assert re.search(r"RUN_TYPE MD", md) and re.search(r"STEPS 9\n", md) and re.search(r"TEMPERATURE 450", md)
    assert re.search(r"TIMESTEP 2.0", md) and re.search(r"TYPE CSVR", md)
    cell = CampaignMaker.from_config({**CAMPAIGN, "prerelax": {"enabled": True}})
    assert "RUN_TYPE CELL_OPT" in cell.relax.cp2k_maker.input_set_generator.get_input_set(structure).cp2k_input.get_str()
    flow = maker.relax.make(structure, campaign="c", iteration=-1, start_index=0)
    assert [j.name for j in flow.jobs] == ["relax", "cp2k relax labels"]
    with pytest.raises(ConfigError, match=r"^initial.method: oracle-md with VASP is not supported yet") as err:
        CampaignMaker.from_config({**CAMPAIGN, "prerelax": {"enabled": False}, "oracle": {"kind": "vasp"}})
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- real CP2K runs


@pytest.mark.slow  # CP2K: 3 force evaluations and one static of Si8 (about 50 s on 2 loaded cores)
def test_a_real_cp2k_prerelaxation_agrees_with_a_static_on_its_structure(cp2k_env, tmp_path, job_store):
    maker = Cp2kRelaxMaker(cp2k_maker=cp2k_relax_maker(SMALL, steps=2, fmax=0.01, relax_cell=False),
                           trajectory_stride=1)
    start = StructureDoc(structure=to_structure(si8()), source=StructureSource.init)
    flow = maker.make(start, campaign="si-relax", iteration=-1, start_index=0)
    out = run_locally(flow, store=job_store, create_folders=True, root_dir=tmp_path, ensure_success=True, log=False)
    doc = RelaxDoc.model_validate(out[flow.jobs[1].uuid][1].output)
    assert doc.n_steps == 2 and len(doc.labels) == 2 and all(lab.ok for lab in doc.labels)
    start_forces = _printed("si8_static")[1] * Hartree / Bohr  # the reference static of the same start
    assert np.abs(doc.labels[-1].forces).max() < np.abs(start_forces).max()
    static = _oracle().make(doc.structure, campaign="si-relax", iteration=-1)
    out = run_locally(static, store=job_store, create_folders=True, root_dir=tmp_path, ensure_success=True, log=False)
    reference = LabelDoc.model_validate(out[static.jobs[1].uuid][1].output)
    last = doc.labels[-1]
    assert last.oracle_fingerprint == reference.oracle_fingerprint and last.oracle == reference.oracle
    assert last.energy == pytest.approx(reference.energy, abs=1e-3)  # eV (SCF to 1e-5)
    np.testing.assert_allclose(last.forces, reference.forces, atol=5e-3)  # eV/Å
    np.testing.assert_allclose(last.stress, reference.stress, atol=1e-4)  # eV/Å³
    with CampaignDB.from_job_store(job_store) as db:
        relaxed = db.structures.query_one({"campaign": "si-relax", "source": "relaxed"})
        assert relaxed["metadata"]["start_index"] == 0 and relaxed["metadata"]["n_steps"] == 2


@pytest.mark.slow  # CP2K: 5 MD force evaluations of Si8 (about 50 s on 2 loaded cores)
def test_a_real_cp2k_md_gives_labelled_frames_with_the_static_fingerprint(cp2k_env, tmp_path, job_store):
    maker = Cp2kMdMaker(cp2k_maker=cp2k_md_maker(SMALL, temperature=600, steps=4), stride=2, n_frames=3)
    flow = maker.make(to_structure(si8()), campaign="si-md", iteration=-1, start_index=0)
    out = run_locally(flow, store=job_store, create_folders=True, root_dir=tmp_path, ensure_success=True, log=False)
    labels = [LabelDoc.model_validate(d) for d in out[flow.jobs[1].uuid][1].output]
    assert len(labels) == 3 and all(lab.ok for lab in labels), [lab.reason for lab in labels]
    assert {lab.oracle_fingerprint for lab in labels} == {_oracle().fingerprint}
    energy, forces, _ = _printed("si8_static")  # step 0 is the start: the reference static of the same cell
    assert labels[0].energy == pytest.approx(energy * Hartree, abs=1e-3)
    np.testing.assert_allclose(labels[0].forces, forces * Hartree / Bohr, atol=5e-3)
    assert len({lab.structure_hash for lab in labels}) == 3 and all(lab.stress is not None for lab in labels)
    with CampaignDB.from_job_store(job_store) as db:
        assert db.labels.count({"campaign": "si-md", "status": "ok", "source": "md"}) == 3
