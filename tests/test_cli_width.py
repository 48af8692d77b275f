"""``almat status`` stays readable on an 80-column terminal; plain commands print no third-party noise."""

import io
import subprocess
import sys
from contextlib import redirect_stdout

from typer.testing import CliRunner

from almat.cli import app

runner = CliRunner()
STOP = "calibrated: 97.5% of explored frames have k·u below 0.05 eV/Å (needs 95%)"


def _store(db):
    from almat.schemas import CampaignDoc, IterationDoc, PoolIterationDoc, TestErrors

    db.upsert("campaigns", [
        CampaignDoc(name="cu-emt-a-rather-long-campaign-name", config={"kind": "md"}, config_fingerprint="f",
                    n_iterations=2, n_labels=1234, status="max_iterations", chemsys="Cu",
                    oracle="ase:ase.calculators.emt.EMT"),
        CampaignDoc(name="cu-pool", config={"kind": "pool"}, config_fingerprint="g", status="running", chemsys="Cu",
                    oracle="ase:ase.calculators.emt.EMT")])
    db.upsert("iterations", [
        IterationDoc(campaign="cu-emt-a-rather-long-campaign-name", iteration=i, trust_lo=0.05 - 0.01 * i, trust_hi=0.3,
                     stage=i, stage_name=["nvt-300-600K", "npt-hot-and-long-name"][i],
                     n_frames_explored=400, accurate_ratio=0.8125 + 0.1 * i, candidate_ratio=0.15, failed_ratio=0.0375,
                     n_labelled=12, n_train_labels=100 + 12 * i, calibrated_fraction=0.975,
                     test_errors=TestErrors(n_structures=12, force_rmse=0.04237), stop_reason=STOP if i else None)
        for i in range(2)])
    db.upsert("pool_iterations", [PoolIterationDoc(campaign="cu-pool", iteration=0, acquisition="committee",
                                                   pool_size=500, n_labels=20, n_unlabelled=480,
                                                   test_errors=TestErrors(force_rmse=0.1234))])


def _lines_fit(output: str, width: int) -> bool:
    return all(len(line) <= width for line in output.splitlines())


def test_status_tables_fit_80_columns_with_a_legend(db):
    _store(db)
    out = runner.invoke(app, ["status", "cu-emt-a-rather-long-campaign-name"], env={"COLUMNS": "80"})
    assert out.exit_code == 0, out.output
    assert _lines_fit(out.output, 80), out.output
    header = next(line for line in out.output.splitlines() if line.strip().startswith("it "))
    assert header.split() == ["it", "stage", "lo", "frames", "acc%", "cand%", "fail%", "train", "new", "F", "RMSE",
                              "k", "<tol%"]
    rows = [line.split() for line in out.output.splitlines() if line.strip()[:2] in ("0 ", "1 ")]
    # the stage's name (cut to 10 characters) and the lower trust level of each iteration
    assert rows == [["0", "nvt-300-6…", "0.05", "400", "81.2", "15", "3.75", "100", "12", "0.0424", "-", "97.5"],
                    ["1", "npt-hot-a…", "0.04", "400", "91.2", "15", "3.75", "112", "12", "0.0424", "-", "97.5"]]
    assert "acc/cand/fail%: explored frames below trust_lo" in out.output  # the legend
    assert f"it 1: {STOP}" in " ".join(out.output.split())  # the stop reason, below the table
    listing = runner.invoke(app, ["status"], env={"COLUMNS": "80"})
    assert listing.exit_code == 0 and _lines_fit(listing.output, 80), listing.output
    body = listing.output.split("─" * 10)[-1].splitlines()
    assert "cu-emt-a-rather-long-campaign-name" in "".join(line.split()[0] for line in body if line.strip())
    assert "ase:EMT" in listing.output and "1234" in listing.output and "max_iterations" in listing.output
    pool = runner.invoke(app, ["status", "cu-pool"], env={"COLUMNS": "80"})
    assert pool.exit_code == 0 and _lines_fit(pool.output, 80) and "0.123" in pool.output, pool.output


def test_wide_terminals_keep_the_full_table(db):
    _store(db)
    out = runner.invoke(app, ["status", "cu-emt-a-rather-long-campaign-name"], env={"COLUMNS": "260"})
    assert "test F RMSE (eV/Å)" in out.output and STOP in out.output and "acc/cand" not in out.output
    assert "npt-hot-and-long-name" in out.output and "lo (eV/Å)" in out.output


def test_mace_import_noise_only_with_verbose():
    from almat.cli import _quiet_third_party

    code = ("import io, sys\nfrom contextlib import redirect_stdout\nfrom almat.cli import _quiet_third_party\n"
            "_quiet_third_party(False)\nimport mace.modules\nassert 'mace.tools.cg' in sys.modules\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "cuequivariance" not in run.stdout + run.stderr
    buf = io.StringIO()
    with redirect_stdout(buf):
        _quiet_third_party(True)  # -v: nothing captured (mace prints its note as usual)
    assert buf.getvalue() == ""
