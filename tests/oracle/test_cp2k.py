"""CP2K through atomate2 as an oracle (``oracle: {kind: cp2k}``).

Fast tests use real reference outputs in tests/test_data/cp2k/ (tests/test_data/cp2k/generate.py); the slow ones
run Debian's CP2K and skip, saying so, where it is not installed.
"""

from __future__ import annotations

import gzip
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.units import Bohr, GPa, Hartree
from jobflow import run_locally

from almat.campaign import CampaignMaker, ConfigError, load_config
from almat.oracle.cp2k import Cp2kStaticOracleMaker, cp2k_labels, cp2k_static_maker
from almat.schemas import LabelDoc, StructureDoc, StructureSource, to_structure
from almat.stores import CampaignDB

pytest.importorskip("atomate2")
CP2K = Path(__file__).parents[1] / "test_data" / "cp2k"
HAVE_CP2K = shutil.which("cp2k.psmp") is not None

#: small, fast settings for tests (not converged physics): SZV-MOLOPT-SR basis, 100 Ry cutoff (rel. 20, 3 grids),
#: looser EPS_DEFAULT, CP2K's own EPS_PGF_ORB (atomate2's 1e-16 is 3x slower here), EPS_SCF 1e-5, diagonalisation
#: with Fermi-Dirac smearing at 300 K (Si8 at Gamma is nearly metallic: OT needs 30+ steps), Gamma point only.
#: One Si8 label: about 6.5 s on 2 cores (CP2K 3.5 s, atomate2's input set 2 s).
SMALL = {"basis_and_potential": {"Si": {"basis": "SZV-MOLOPT-SR-GTH", "potential": "GTH-PBE-q4"}},
         "cutoff": 100, "rel_cutoff": 20, "ngrids": 3, "eps_default": 1e-8, "eps_pgf_orb": None, "eps_scf": 1e-5,
         "ot": False, "kpoints": "gamma"}


def si8(seed: int = 1):
    """A rattled, sheared diamond Si8 cell."""
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.set_cell(atoms.cell[:] @ np.array([[1.01, 0.0, 0.0], [0.02, 0.99, 0.0], [0.0, 0.0, 1.0]]), scale_atoms=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def _oracle(**changes) -> Cp2kStaticOracleMaker:
    return Cp2kStaticOracleMaker(cp2k_maker=cp2k_static_maker(**{**SMALL, **changes}))


def _doc(atoms=None) -> StructureDoc:
    return StructureDoc(structure=to_structure(atoms if atoms is not None else si8()), source=StructureSource.md)


def _task(case: str, tmp_path: Path):
    """atomate2's TaskDocument of a reference run, read from a copy of its folder (the label reads cp2k.out.gz)."""
    from atomate2.cp2k.schemas.task import TaskDocument

    folder = shutil.copytree(CP2K / case, tmp_path / case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TaskDocument.from_directory(folder)


def _printed(case: str):
    """Energy (Ha), forces (Ha/Bohr) and stress (GPa) as CP2K printed them."""
    with gzip.open(CP2K / case / "cp2k.out.gz", "rt") as f:
        text = f.read()
    energy = float(re.search(r"Total FORCE_EVAL \( QS \) energy \[a\.u\.\]:\s+(\S+)", text).group(1))
    block = text.split("ATOMIC FORCES in [a.u.]")[1].split("SUM OF ATOMIC FORCES")[0]
    forces = [[float(x) for x in line.split()[3:6]] for line in block.splitlines()
              if re.match(r"\s+\d+\s+\d+\s+Si", line)]
    rows = re.findall(r"STRESS\|\s+[xyz]\s+(-?[\d.]+E[-+]\d+)\s+(-?[\d.]+E[-+]\d+)\s+(-?[\d.]+E[-+]\d+)", text)
    stress = [[float(x) for x in row] for row in rows[:3]]
    return energy, np.array(forces), np.array(stress)


def test_fingerprint_changes_with_functional_basis_cutoff_kpoints_only():
    base = _oracle()
    changed = {
        "functional": _oracle(xc_functionals=["PBESOL"]),
        "basis": _oracle(basis_and_potential={"Si": {"basis": "DZVP-MOLOPT-SR-GTH", "potential": "GTH-PBE-q4"}}),
        "cutoff": _oracle(cutoff=200),
        "kpoints": _oracle(kpoints={"reciprocal_density": 64}),
    }
    prints = {name: o.fingerprint for name, o in changed.items()}
    assert base.fingerprint not in prints.values() and len(set(prints.values())) == 4, prints
    # convergence thresholds are not the level of theory
    assert _oracle(eps_scf=1e-7).fingerprint == base.fingerprint
    assert base.oracle_name == "cp2k:StaticSetGenerator"
    s = base.settings
    assert s["functional"] == ["PBE"] and s["cutoff"] == 100 and s["kpoints"] == "gamma"
    assert s["basis_and_potential"]["Si"]["basis"] == "SZV-MOLOPT-SR-GTH"
    # atomate2's defaults with PBE: its own basis table, cutoff from the basis, reciprocal density 64
    default = Cp2kStaticOracleMaker().settings
    assert default["kpoints"] == {"reciprocal_density": 64} and default["cutoff"] == 0
    assert Cp2kStaticOracleMaker().fingerprint != base.fingerprint


def test_fingerprint_does_not_depend_on_the_structure(tmp_path):
    oracle = _oracle()
    flows = [oracle.make(_doc(si8(seed)), campaign="c", iteration=0) for seed in (1, 2)]
    settings = [f.jobs[1].function_kwargs.get("settings") or f.jobs[1].function_args[2] for f in flows]
    assert settings[0] == settings[1] == oracle.settings
    label = cp2k_labels.original(_task("si8_static", tmp_path), _doc(), oracle.settings)
    assert label.oracle_fingerprint == oracle.fingerprint and label.oracle == oracle.oracle_name


def test_label_from_a_real_run_is_in_ev_ev_per_angstrom_and_ase_stress(tmp_path):
    energy, forces, stress = _printed("si8_static")
    label = cp2k_labels.original(_task("si8_static", tmp_path), _doc(), _oracle().settings, campaign="c", iteration=0)
    assert label.ok, label.reason
    assert label.energy == pytest.approx(energy * Hartree, abs=1e-4)  # Ha -> eV
    np.testing.assert_allclose(label.forces, forces * Hartree / Bohr, atol=1e-6)  # Ha/Bohr -> eV/Å
    np.testing.assert_allclose(label.stress, -stress * GPa, atol=1e-8)  # GPa, compressive > 0 -> ASE
    assert np.asarray(label.forces).shape == (8, 3) and abs(np.asarray(label.forces).sum(axis=0)).max() < 0.05
    assert label.structure == _doc().structure  # the input structure, not CP2K's 1e-3 Å printout of it
    assert label.oracle_settings["actual"]["basis_potential"] == {"Si": ["SZV-MOLOPT-SR-GTH", "GTH-PBE-q4"]}
    assert label.run_dir.endswith("si8_static")


def test_forces_follow_the_input_site_order(tmp_path):
    """atomate2 sorts the sites before CP2K sees them: the label maps the forces back to the input order."""
    atoms = si8()[::-1]
    label = cp2k_labels.original(_task("si8_static", tmp_path), _doc(atoms), _oracle().settings)
    _, forces, _ = _printed("si8_static")
    assert label.ok and label.structure == to_structure(atoms)
    np.testing.assert_allclose(label.forces, forces[::-1] * Hartree / Bohr, atol=1e-6)


def test_unconverged_scf_is_a_failed_label_with_the_reason(tmp_path):
    label = cp2k_labels.original(_task("si8_scf_unconverged", tmp_path), _doc(), _oracle().settings)
    assert not label.ok and "SCF not converged" in label.reason and "si8_scf_unconverged" in label.reason
    assert label.energy is None and label.oracle_fingerprint == _oracle().fingerprint


def test_a_cp2k_job_that_fails_gives_a_failed_label_and_the_campaign_goes_on(tmp_path, job_store):
    """The CP2K job raises (here: its command does not exist); the parse job still runs and records a failed
    label naming that job."""
    oracle = _oracle()
    oracle.cp2k_maker.run_cp2k_kwargs["cp2k_cmd"] = "no-such-cp2k.psmp"
    flow = oracle.make(_doc(), campaign="si-fail", iteration=0)
    responses = run_locally(flow, store=job_store, create_folders=True, root_dir=tmp_path, log=False)
    label = LabelDoc.model_validate(responses[flow.jobs[1].uuid][1].output)
    assert not label.ok and flow.jobs[0].uuid in label.reason and "no task document" in label.reason
    with CampaignDB.from_job_store(job_store) as db:
        assert db.labels.count({"campaign": "si-fail", "status": "failed"}) == 1


def test_campaign_file_oracle_kind_cp2k():
    cfg = {"name": "si-cp2k", "structures": [{"bulk": {"name": "Si", "crystalstructure": "diamond", "a": 5.43}}],
           "oracle": {"kind": "cp2k", "cp2k": SMALL}}
    maker = CampaignMaker.from_config(cfg)
    assert isinstance(maker.oracle, Cp2kStaticOracleMaker) and maker.oracle.fingerprint == _oracle().fingerprint
    assert maker.oracle_fingerprint == _oracle().fingerprint
    # a campaign without CP2K settings keeps its fingerprint (empty settings are left out of it)
    plain = {k: v for k, v in cfg.items() if k != "oracle"}
    assert load_config(plain).fingerprint() == load_config({**plain, "oracle": {"cp2k": {}}}).fingerprint()
    assert load_config(cfg).fingerprint() != load_config({**cfg, "oracle": {"kind": "cp2k"}}).fingerprint()
    # pre-relaxation and oracle MD with CP2K build (tests/oracle/test_cp2k_relax_md.py runs them)
    relaxing = CampaignMaker.from_config({**cfg, "prerelax": {"enabled": True}})
    assert relaxing.relax.fingerprint == _oracle().fingerprint


def test_cp2k_environment_names_what_is_missing_in_one_line(tmp_path, monkeypatch):
    from atomate2 import SETTINGS

    from almat.oracle.cp2k import cp2k_environment

    monkeypatch.setattr(SETTINGS, "CP2K_CMD", "mpirun -np 2 no-such-cp2k.psmp")
    with pytest.raises(FileNotFoundError, match=r"^CP2K not found: 'no-such-cp2k.psmp' is not on PATH") as err:
        cp2k_environment(tmp_path)
    assert "\n" not in str(err.value)
    if HAVE_CP2K:
        monkeypatch.setattr(SETTINGS, "CP2K_CMD", "cp2k.psmp")
        with pytest.raises(FileNotFoundError, match="run pmg config --cp2k /usr/share/cp2k .*empty"):
            cp2k_environment(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------- real CP2K runs


@pytest.fixture
def cp2k_env(tmp_path_factory):
    """``cp2k_environment()`` for one test. pymatgen's copy of CP2K's data (``pmg config --cp2k``, ~40 s) is made
    once beside pytest's temp folders and kept for later sessions."""
    if not HAVE_CP2K:
        pytest.skip("CP2K is not installed (apt-get install cp2k); .ci/run installs it")
    import contextlib
    import io
    import os

    from pymatgen.cli.pmg_config import setup_cp2k_data
    from pymatgen.core import SETTINGS

    from almat.oracle.cp2k import cp2k_environment

    data = tmp_path_factory.getbasetemp().parent / "almat-cp2k-pmg"
    if not (data / "Si").is_file():
        tmp = data.with_name(f"{data.name}.{os.getpid()}")  # made aside, then renamed: never half a copy
        with contextlib.redirect_stdout(io.StringIO()):
            setup_cp2k_data(["/usr/share/cp2k", str(tmp)])
        with contextlib.suppress(OSError):
            tmp.rename(data)
        shutil.rmtree(tmp, ignore_errors=True)
    saved, saved_env = dict(SETTINGS), {v: os.environ.pop(v, None) for v in ("PMG_CP2K_DATA_DIR",
                                                                             "PMG_DEFAULT_CP2K_FUNCTIONAL")}
    yield cp2k_environment(data_dir=data)
    SETTINGS.clear()
    SETTINGS.update(saved)
    for var, value in saved_env.items():
        os.environ.pop(var, None)
        if value is not None:
            os.environ[var] = value


SI_CAMPAIGN = {
    "name": "si-cp2k",
    "structures": [{"bulk": {"name": "Si", "crystalstructure": "diamond", "a": 5.43, "cubic": True}}],
    "oracle": {"kind": "cp2k", "cp2k": SMALL},
    "initial": {"n_per_structure": 3, "rattle_std": 0.05, "max_strain": 0.02},
    "learner": {"n_models": 2, "hyperparameters": {"num_channels": 8, "epochs": 20, "batch_size": 2}},
    "sampler": {"temperatures": [600], "steps": 20, "sample_every": 5, "trust_lo": 0.01, "trust_hi": 10.0},
    "selection": {"policy": "max_deviation", "max_select": 2},
    "convergence": {"rule": "accurate_ratio", "calibration_samples": 0, "max_iterations": 1},
}


@pytest.mark.slow
def test_a_tiny_si_campaign_labelled_by_real_cp2k(cp2k_env, tmp_path):
    """End to end: 3 initial Si8 labels and up to 2 selected MD frames, all real PBE CP2K statics."""
    import time

    from almat.campaign import run_campaign
    from almat.settings import AlmatSettings

    settings = AlmatSettings(db_path=tmp_path / "db", run_dir=tmp_path / "runs")
    start = time.perf_counter()
    result = run_campaign(load_config(SI_CAMPAIGN), settings)
    wall = time.perf_counter() - start
    assert result.campaign.status.value in ("converged", "max_iterations") and len(result.iterations) == 1
    with CampaignDB.from_settings(settings) as db:
        labels = [LabelDoc.from_store(d) for d in db.labels.query({"campaign": "si-cp2k"})]
    ok = [lab for lab in labels if lab.ok]
    assert len(ok) >= 4, [lab.reason for lab in labels if not lab.ok]
    fingerprint = _oracle().fingerprint
    for lab in ok:
        assert lab.oracle == "cp2k:StaticSetGenerator" and lab.oracle_fingerprint == fingerprint
        assert np.isfinite(lab.energy) and -845 < lab.energy < -835  # Si8, eV
        assert np.asarray(lab.forces).shape == (8, 3) and np.all(np.isfinite(lab.forces))
        assert np.asarray(lab.stress).shape == (3, 3)
    print(f"\nSi8 CP2K campaign: {wall:.0f} s, {len(ok)} ok / {len(labels) - len(ok)} failed labels, "
          f"energies {sorted(round(lab.energy, 3) for lab in ok)} eV")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # FireWorks' ping thread
def test_cp2k_label_jobs_run_through_fireworks_on_the_cpu_queue(cp2k_env, tmp_path, monkeypatch, job_store):
    """``label_batch`` of two Si8 structures with the CP2K oracle, as a FireWorks workflow on an in-process
    mongomock LaunchPad: the CP2K jobs and their parse jobs are routed to ``cpu``, run by a cpu worker, and the
    labels land in the store."""
    import jobflow
    import mongomock
    import yaml
    from fireworks import FWorker
    from fireworks.core import launchpad as lp_module
    from fireworks.core.rocket_launcher import rapidfire
    from jobflow.managers.fireworks import flow_to_workflow

    from almat.campaign.jobs import label_batch
    from almat.launch.routing import Routing
    from almat.launch.submit import load_launchpad

    monkeypatch.setattr(lp_module, "MongoClient", mongomock.MongoClient)
    monkeypatch.setattr(lp_module, "GRIDFS_FALLBACK_COLLECTION", None)
    monkeypatch.setattr(jobflow.SETTINGS, "JOB_STORE", job_store)  # what a worker's jobflow config gives
    (tmp_path / "launchpad.yaml").write_text(yaml.safe_dump({"host": "mongo.example.org", "name": "fw_cp2k"}))
    lp = load_launchpad(tmp_path / "launchpad.yaml")
    monkeypatch.chdir(tmp_path)

    routing = Routing().model_dump()
    response = label_batch.original([_doc(si8(1)), _doc(si8(2))], _oracle(), "si-fw", 0, routing=routing)
    lp.add_wf(flow_to_workflow(response.replace))
    rapidfire(lp, FWorker(name="w-cpu", category=["cpu"]), m_dir=str(tmp_path), strm_lvl="ERROR")
    fws = [lp.get_fw_by_id(i) for i in lp.get_fw_ids()]
    assert sorted(fw.name for fw in fws) == ["cp2k oracle labels"] * 2 + ["static"] * 2
    for fw in fws:
        assert fw.state == "COMPLETED" and fw.spec["_category"] == "cpu", fw.name
        assert fw.launches[-1].fworker.category == ["cpu"]
    with CampaignDB.from_job_store(job_store) as db:
        labels = [LabelDoc.from_store(d) for d in db.labels.query({"campaign": "si-fw"})]
    assert len(labels) == 2 and all(lab.ok for lab in labels), [lab.reason for lab in labels]
    assert {lab.structure_hash for lab in labels} == {_doc(si8(1)).structure_hash, _doc(si8(2)).structure_hash}


@pytest.mark.slow
def test_a_cut_down_copy_of_the_cp2k_data_writes_the_same_inputs(cp2k_env, tmp_path):
    """``cp2k_data_subset`` keeps only the basis sets and potentials the settings name: the input files that
    atomate2's set writes for a Li-P-S-Cl cell with DZVP are byte-identical to those from the whole data."""
    from pymatgen.core import SETTINGS, Lattice, Structure

    from almat.oracle.cp2k import cp2k_data_subset, cp2k_environment

    kinds = {el: {"basis": "DZVP-MOLOPT-SR-GTH", "potential": f"GTH-PBE-q{q}"}
             for el, q in {"Li": 3, "P": 5, "S": 6, "Cl": 7}.items()}
    settings = {**SMALL, "basis_and_potential": kinds}
    full = Path(cp2k_env["PMG_CP2K_DATA_DIR"])
    subset = cp2k_data_subset(settings, full, tmp_path / "subset")
    assert sorted(p.name for p in subset.iterdir()) == ["Cl", "Li", "P", "S"]
    assert sum(p.stat().st_size for p in subset.iterdir()) < sum((full / el).stat().st_size for el in kinds) / 10
    cell = Structure(Lattice.cubic(6.0), ["Li", "Li", "P", "S", "Cl"],
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5], [0.25, 0.25, 0.25]])
    written = {}
    for name, data in (("full", full), ("subset", subset)):
        cp2k_environment(data_dir=data)
        folder = tmp_path / f"inputs_{name}"
        cp2k_static_maker(**settings).input_set_generator.get_input_set(cell).write_input(folder)
        written[name] = {p.name: p.read_bytes() for p in folder.iterdir()}
    cp2k_environment(data_dir=full)
    assert SETTINGS["PMG_CP2K_DATA_DIR"] == str(full)
    assert written["full"] == written["subset"] and b"DZVP-MOLOPT-SR-GTH" in written["full"]["cp2k.inp"]
    with pytest.raises(ValueError, match="no basis_and_potential"):
        cp2k_data_subset({"cutoff": 100}, full, tmp_path / "none")
