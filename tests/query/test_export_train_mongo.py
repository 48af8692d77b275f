"""Queries on the result (issue 25, part 5): on a MongoDB server (the stand-in), pull a campaign's labels by
chemistry and oracle fingerprint from Python (and with ``almat export``), write the extxyz, and train MACE's
own trainer (``mace_run_train``) on it for one epoch."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from almat_query_testutils import EMT_ASAP_SPEC, cu_structures, cuau_structures, label_all
from typer.testing import CliRunner

from almat.cli import app
from almat.export import export_labels
from almat.query import MixedOraclesError, query_labels
from almat.settings import AlmatSettings
from almat.stores import CampaignDB

pytestmark = [pytest.mark.mongo, pytest.mark.slow]  # mace_run_train: about 35 s


def test_labels_by_chemistry_and_fingerprint_train_with_mace_run_train(mongo_uri, new_mongo_database, tmp_path):
    from ase.io import read

    database = new_mongo_database()
    settings = AlmatSettings(mongo_uri=mongo_uri, database=database)
    with CampaignDB.from_settings(settings) as db:
        db.ensure_indexes()
        cu = label_all(cu_structures(8, seed=3), campaign="cu-a", iteration=0)
        db.upsert("labels", cu + label_all(cuau_structures(3), campaign="cuau", iteration=0)
                  + label_all(cu_structures(3, seed=4), spec=EMT_ASAP_SPEC, campaign="cu-asap", iteration=1))
        fp = cu[0].oracle_fingerprint
        with pytest.raises(MixedOraclesError):  # Cu by two oracle settings: never mixed silently
            query_labels(db, chemsys="Cu").ids()
        q = query_labels(db, chemsys="Cu", oracle_fingerprint=fp)
        assert q.count() == 8 and sorted(q.ids()) == sorted(lab.label_id for lab in cu)
        result = export_labels(db, tmp_path / "cu.xyz", chemsys="Cu", oracle_fingerprint=fp)
    assert result.n_labels == 8
    frames = read(tmp_path / "cu.xyz", ":")
    by_id = {lab.label_id: lab for lab in cu}
    for atoms in frames:
        lab = by_id[atoms.info["label_id"]]
        assert atoms.info["oracle_fingerprint"] == fp and atoms.info["campaign"] == "cu-a"
        assert atoms.info["REF_energy"] == pytest.approx(lab.energy)
        assert np.allclose(atoms.arrays["REF_forces"], lab.forces)

    # the other path: almat export, with the same filters, writes the same labels
    out = CliRunner().invoke(app, ["export", str(tmp_path / "cli.xyz"), "--chemsys", "Cu", "--oracle-fingerprint", fp],
                             env={"ALMAT_MONGO_URI": mongo_uri, "ALMAT_DATABASE": database})
    assert out.exit_code == 0 and "8 labels written" in out.output, out.output
    assert sorted(a.info["label_id"] for a in read(tmp_path / "cli.xyz", ":")) == sorted(by_id)

    work = tmp_path / "mace"
    cmd = [str(Path(sys.executable).with_name("mace_run_train")), "--name", "cu", "--train_file",
           str(tmp_path / "cu.xyz"), "--valid_fraction", "0.25", "--E0s", "average", "--model", "MACE",
           "--num_channels", "8", "--max_L", "0", "--r_max", "4.0", "--max_num_epochs", "1", "--batch_size", "2",
           "--device", "cpu", "--default_dtype", "float32", "--seed", "1", "--work_dir", str(work)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    model = next(work.rglob("cu.model"))
    log = "\n".join(p.read_text() for p in work.rglob("*.log"))
    # MACE read every exported frame's REF_ energy, forces and stress (its default keys), and trained on them
    total = next(line for line in log.splitlines() if "Total Training set [" in line)
    assert "energy: 8, stress: 8," in total and "forces: 8," in total, total
    assert "Total number of configurations: train=6, valid=2" in log and "Training complete" in log

    from mace.calculators import MACECalculator

    atoms = frames[0].copy()
    atoms.calc = MACECalculator(model_paths=str(model), device="cpu", default_dtype="float32")
    assert np.isfinite(atoms.get_potential_energy()) and np.all(np.isfinite(atoms.get_forces()))
