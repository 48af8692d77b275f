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


def test_run_and_status_of_an_nft_campaign(tmp_path):
    """`almat run` dispatches on the file's kind; `almat status` reads that kind's records."""
    import yaml

    cu = {"name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True}
    cfg = {
        "kind": "nft", "name": "cli-nft",
        "target": {"bulk": cu, "supercell": [3, 3, 3], "rattle_std": 0.1, "seed": 0},
        "structures": [{"bulk": cu, "supercell": [2, 2, 2]}],
        "initial": {"n_per_structure": 4, "rattle_std": 0.05},
        "learner": {"n_models": 2, "hyperparameters": {"num_channels": 8, "r_max": 4.0, "radial_mlp": [16],
                                                      "epochs": 4, "batch_size": 4, "eval_every": 4}},
        "chunks": {"mode": "cluster", "cutoff": 4.5, "percentile": 95, "max_chunks": 2, "vacuum": 5.0},
        "convergence": {"stop_delta": 0.001, "max_iterations": 1},
    }
    path = tmp_path / "nft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = runner.invoke(app, ["run", str(path)])
    assert out.exit_code == 0, out.output
    assert "nft campaign cli-nft" in out.output and "max_iterations" in out.output
    data = json.loads(runner.invoke(app, ["status", "cli-nft", "--json"]).output)
    assert data["kind"] == "nft" and data["status"] == "max_iterations"
    (row,) = data["iterations"]
    assert row["iteration"] == 0 and row["max_uncertainty"] > 0 and row["n_chunks"] == 0  # the last labels nothing
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: grid\nname: x\n")
    out = runner.invoke(app, ["run", str(bad)])
    assert out.exit_code == 1 and "valid: md, pool, nft" in out.output
