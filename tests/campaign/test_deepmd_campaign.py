"""A whole MD campaign with a DeePMD committee (``learner.kind: deepmd``, Cu, EMT): a real ``almat run`` process is
killed with SIGKILL while it trains iteration 0's committee and resumed; the campaign ends with nothing lost or
half-written, iteration 1 continues from iteration 0's members, the stored models reload safely, and
``almat export-model`` writes the frozen graph that deepmd's own ``DeepPot`` (what LAMMPS' pair_style deepmd
and ``dp test`` load) reads to the committee member's numbers."""

import numpy as np
import pytest
from test_kill import Runner, _intact

pytest.importorskip("deepmd")

from almat.learner.committee import Committee  # noqa: E402
from almat.schemas import ModelDoc, StructureDoc, to_atoms  # noqa: E402
from almat.stores import CampaignDB  # noqa: E402

HP = {"numb_steps": 100, "warm_start_steps": 40, "neuron": [8, 16], "axis_neuron": 4, "fitting_neuron": [16, 16],
      "rcut": 4.5, "rcut_smth": 2.0}
CONFIG = {"name": "dp-kill", "oracle": {"calculator": {"module": "ase.calculators.emt", "class": "EMT"}},
          "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}, "supercell": [2, 2, 2]}],
          "initial": {"n_per_structure": 6, "rattle_std": 0.05, "max_strain": 0.02},
          "learner": {"kind": "deepmd", "n_models": 2, "hyperparameters": HP},
          # a tiny DeePMD committee disagrees by tenths of eV/Å: every explored frame is a candidate
          "sampler": {"temperatures": [600], "steps": 24, "sample_every": 4, "trust_lo": 1e-4, "trust_hi": 50.0},
          "selection": {"policy": "max_deviation", "max_select": 2},
          "convergence": {"rule": "calibrated", "force_tolerance": 1e-4, "calibration_samples": 2,
                          "max_iterations": 2}}


@pytest.mark.slow
def test_a_deepmd_campaign_killed_in_training_resumes_and_its_models_reload_and_export(tmp_path, settings):
    run = Runner(tmp_path, settings, CONFIG)
    run.kill_when(run.start(), "models", 1)  # iteration 0's first member is stored, the second is training
    run.finish()
    _intact(settings, "dp-kill", "iterations", 2)
    with CampaignDB.from_settings(settings) as db:
        models = [ModelDoc.from_store(d) for d in db.models.query({"campaign": "dp-kill"})]
        assert {m.architecture for m in models} == {"DeePMD"} and len(models) == 4
        assert all(m.warm_started_from for m in models if m.iteration == 1)  # dp train --init-frz-model
        assert all(m.epochs_trained == (40 if m.iteration == 1 else 100) for m in models)
        last = max(db.iterations.query({"campaign": "dp-kill"}), key=lambda d: d["iteration"])
        committee = Committee.from_store(db, last["model_ids"])
        frames = [to_atoms(StructureDoc.from_store(d).structure)
                  for d in db.structures.query({"campaign": "dp-kill", "source": "md"}, limit=3)]
    assert type(committee.learner).__name__ == "DeepmdLearner" and committee.elements == ["Cu"]
    pred = committee.predict(frames)
    assert np.isfinite(pred.energies).all() and (pred.model_deviation > 0).all()

    from deepmd.infer import DeepPot
    from typer.testing import CliRunner

    from almat.cli import app

    out = tmp_path / "graph.pb"
    done = CliRunner().invoke(app, ["export-model", "dp-kill", "-o", str(out)], env=run.env)
    assert done.exit_code == 0, done.output
    assert f"model {last['model_ids'][0]} (iteration 1, member 0, DeePMD) written to" in " ".join(done.output.split())
    again = CliRunner().invoke(app, ["export-model", "dp-kill", "-o", str(out)], env=run.env)
    assert again.exit_code == 1 and "exists (--force overwrites it)" in again.output
    pot = DeepPot(str(out))
    for atoms, energy in zip(frames, pred.energies[0]):
        e, _, _ = pot.eval(atoms.positions.reshape(1, -1), atoms.cell.array.reshape(1, -1), [0] * len(atoms))
        assert abs(float(e.sum()) - energy) < 1e-8
    unknown = CliRunner().invoke(app, ["export-model", "no-such", "-o", str(tmp_path / "x.pb")], env=run.env)
    assert unknown.exit_code == 1 and "campaign 'no-such' has no trained committee" in unknown.output
