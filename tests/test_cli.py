import json

from typer.testing import CliRunner

from almat.cli import app

runner = CliRunner()


def test_help_lists_commands():
    out = runner.invoke(app, ["--help"])
    assert out.exit_code == 0
    assert "run" in out.output and "status" in out.output


def test_status_on_empty_store(tmp_path):
    out = runner.invoke(app, ["status", "--json"])
    assert out.exit_code == 0 and json.loads(out.output) == []
    out = runner.invoke(app, ["status", "nope"])
    assert out.exit_code == 1 and "no campaign 'nope'" in out.output


def test_status_lists_stored_campaigns(db):
    from almat.schemas import CampaignDoc, IterationDoc, TestErrors

    db.upsert("campaigns", [CampaignDoc(name="c1", config={}, config_fingerprint="f", n_iterations=1,
                                        n_labels=12, status="converged", chemsys="Cu")])
    db.upsert("iterations", [IterationDoc(campaign="c1", iteration=0, trust_lo=0.05, trust_hi=0.3,
                                          n_frames_explored=40, accurate_ratio=0.975, n_labelled=2,
                                          n_train_labels=10, test_errors=TestErrors(n_structures=2, force_rmse=0.042))])
    out = runner.invoke(app, ["status", "c1", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["status"] == "converged" and data["labels"] == 12
    assert data["iterations"][0]["accurate_pct"] == 97.5 and data["iterations"][0]["test_force_rmse"] == 0.042
    table = runner.invoke(app, ["status", "c1"])
    assert "97.5" in table.output and "0.042" in table.output
    listing = runner.invoke(app, ["status"])
    assert "c1" in listing.output and "converged" in listing.output


def test_run_with_bad_config_is_a_one_line_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\nstructures:\n  - bulk: {name: Cu}\nsampler:\n  temprature: [300]\n")
    out = runner.invoke(app, ["run", str(cfg)])
    assert out.exit_code == 1
    assert "sampler.temprature: unknown key" in out.output
    out = runner.invoke(app, ["run", str(tmp_path / "missing.yaml")])
    assert out.exit_code == 1 and "not found" in out.output


def test_enumerate_command_writes_one_file_per_structure(tmp_path):
    from pathlib import Path

    cif = Path(__file__).parent / "test_data" / "structures" / "Li6PS5Cl_argyrodite.cif"
    out = runner.invoke(app, ["enumerate", str(cif), "--occupancy", "Li+=0.5", "--primitive",
                              "--max-structures", "5", "-o", str(tmp_path / "enum"), "--format", "poscar"])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("5 structures written")
    files = sorted((tmp_path / "enum").iterdir())
    assert len(files) == 5
    from pymatgen.core import Structure

    assert Structure.from_file(files[0]).composition.reduced_formula == "Li6PS5Cl"
    bad = runner.invoke(app, ["enumerate", str(cif), "--primitive", "-o", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "0.5 (6/12)" in bad.output
