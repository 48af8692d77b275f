"""The bad-input catalogue: every way a user can get it wrong ends with one line, naming the cause, a
non-zero exit code, and a store exactly as it was.

Each case runs the real command line (in process) against a store that holds a campaign and its labels."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase.build import bulk
from secret_uri import SECRET, uri_with_secret
from typer.testing import CliRunner

from almat.cli import app
from almat.oracle import CalculatorSpec, label_with_calculator
from almat.schemas import CampaignDoc, to_structure
from almat.stores import CampaignDB

runner = CliRunner()
EMT = CalculatorSpec("ase.calculators.emt", "EMT")
CU = {"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True}}
GOOD = {"name": "stored", "structures": [CU], "initial": {"n_per_structure": 4},
        "learner": {"n_models": 2, "hyperparameters": {"num_channels": 8, "epochs": 2}},
        "sampler": {"temperatures": [300], "steps": 10, "sample_every": 2}}


@pytest.fixture
def store(db, tmp_path):
    """A store with a campaign, its labels and an exported JSON-lines file of them."""
    rng = np.random.default_rng(0)
    structures = []
    for _ in range(4):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        structures.append(to_structure(atoms))
    db.upsert("labels", [label_with_calculator(s, EMT, campaign="stored", iteration=-1) for s in structures])
    from almat.campaign import load_config

    cfg = load_config(GOOD)
    db.upsert("campaigns", [CampaignDoc(name="stored", config=cfg.model_dump(mode="json", by_alias=True),
                                        config_fingerprint=cfg.fingerprint(), status="converged", chemsys="Cu",
                                        elements=["Cu"], n_labels=4)])
    out = runner.invoke(app, ["export", str(tmp_path / "labels.jsonl"), "-c", "stored"])
    assert out.exit_code == 0, out.output
    return db


def _snapshot(db: CampaignDB) -> dict:
    return {name: sorted(json.dumps({k: v for k, v in d.items() if k not in ("_id", "last_updated")},
                                    sort_keys=True, default=str) for d in store.query({}))
            for name, store in db.all_stores().items() if name != "data"}


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _config(tmp_path: Path, **changes) -> str:
    cfg = {**GOOD, "name": "new", **changes}
    return _write(tmp_path / "c.yaml", yaml.safe_dump(cfg))


def _jsonl(tmp_path: Path, damage) -> str:
    lines = (tmp_path / "labels.jsonl").read_text().splitlines()
    lines[2] = json.dumps(damage(json.loads(lines[2])))
    return _write(tmp_path / "bad.jsonl", "\n".join(lines) + "\n")




def _read_only(t: Path, m) -> None:
    """The store opens read-only (as a non-root user's would on a read-only file or mount)."""
    import sqlite3

    connect = sqlite3.connect
    m.setattr(sqlite3, "connect", lambda p, **kw: connect(f"file:{p}?mode=ro", uri=True, **kw))


def _full_disk(t: Path, m) -> None:
    """The store cannot grow by a single page (a full disk, or a quota)."""
    import sqlite3

    connect = sqlite3.connect

    def full(p, **kw):
        conn = connect(p, **kw)
        conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
        return conn

    m.setattr(sqlite3, "connect", full)


def _new_labels(t: Path) -> str:
    lines = (t / "labels.jsonl").read_text().splitlines()
    lines[1:-1] = [json.dumps({**json.loads(line), "label_id": f"new{i}"}) for i, line in enumerate(lines[1:-1])]
    return _write(t / "new.jsonl", "\n".join(lines) + "\n")

def _gold_model(t: Path) -> str:
    """A MACE foundation file (untrained) that knows only gold, written as mace writes models."""
    import torch

    from almat.learner.hyperparameters import MaceHyperParameters
    from almat.learner.mace import mace_architecture
    from almat.learner.models import model_from_architecture

    model = model_from_architecture(mace_architecture(MaceHyperParameters(num_channels=4), [79], [-3.0], 8.0, 1.0, 0.0))
    del model.almat_architecture
    torch.save(model, t / "gold.model")
    return str(t / "gold.model")


#: id -> (argv builder(tmp_path, monkeypatch), message regex)
CASES = {
    # campaign files
    "yaml-syntax": (lambda t, m: ["run", _write(t / "c.yaml", "name: x\nstructures: [\n  - a: b\n")],
                    r"not valid YAML at line 3, column 3"),
    "missing-file": (lambda t, m: ["run", str(t / "nope.yaml")], r"campaign file not found: .*nope.yaml"),
    "file-is-folder": (lambda t, m: ["run", str(t)], r"is a folder, not a campaign file"),
    "not-a-mapping": (lambda t, m: ["run", _write(t / "c.yaml", "- a\n- b\n")], r"mapping"),
    "unknown-key": (lambda t, m: ["run", _config(t, sampler={"temprature": [300]})], r"sampler.temprature: unknown key"),
    "unknown-kind": (lambda t, m: ["run", _config(t, kind="gcmc")], r"kind.*'gcmc'.*md.*pool.*nft"),
    "trust-levels": (lambda t, m: ["run", _config(t, sampler={"trust_lo": 0.5, "trust_hi": 0.1})], r"sampler: trust levels need lo < hi, got lo=0.5, hi=0.1"),
    "conv-confidence": (lambda t, m: ["run", _config(t, convergence={"rule": "confidence_bound", "conv_confidence": 1.5})],
                        r"convergence.conv_confidence: the confidence level must be strictly between 0 and 1 "
                        r"\(e.g. 0.9\), got 1.5"),
    "calibrated-trust": (lambda t, m: ["run", _config(t, sampler={"trust_units": "calibrated"}, convergence={
        "rule": "accurate_ratio", "calibration_samples": 0})],
                         r"sampler.trust_units: calibrated trust levels need calibration frames to fit k, but "
                         r"convergence.calibration_samples is 0"),
    "calculator-module": (lambda t, m: ["run", _config(t, oracle={"calculator": {"module": "no_such_mod", "class": "X"}})],
                          r"cannot import calculator module 'no_such_mod'"),
    "one-model": (lambda t, m: ["run", _config(t, learner={"n_models": 1})], r"n_models.*2"),
    "steps-not-a-number": (lambda t, m: ["run", _config(t, sampler={"steps": "many"})], r"sampler.steps.*integer"),
    "unknown-element": (lambda t, m: ["run", _config(t, structures=[{"bulk": {"name": "Xq", "crystalstructure": "fcc", "a": 3}}])],
                        r"Xq"),
    "no-structures": (lambda t, m: ["run", _config(t, structures=[])], r"structures"),
    "max-iterations-0": (lambda t, m: ["run", _config(t, convergence={"max_iterations": 0})], r"max_iterations"),
    "oracle-kind": (lambda t, m: ["run", _config(t, oracle={"kind": "gaussian"})], r"oracle.kind: Input should be 'ase', 'vasp' or 'cp2k'"),
    "learner-kind": (lambda t, m: ["run", _config(t, learner={"kind": "bogus"})],
                     r"learner: unknown learner kind 'bogus'; valid: mace, mace-finetune, chgnet-finetune"),
    "foundation-missing": (lambda t, m: ["run", _config(t, learner={"kind": "mace-finetune",
                                                                    "foundation": "nowhere.model"})],
                           r"learner: foundation model file not found: .*nowhere.model$"),
    "foundation-not-a-model": (lambda t, m: ["run", _config(t, learner={"kind": "mace-finetune", "foundation": _write(
        t / "notes.model", "my notes\n")})], r"learner: .*notes.model is not a MACE model \(not a torch archive\)$"),
    "foundation-element": (lambda t, m: ["run", _config(t, learner={"kind": "mace-finetune",
                                                                    "foundation": _gold_model(t)})],
                           r"learner: the foundation model .*gold.model was not trained on Cu$"),
    "foundation-other-kind": (lambda t, m: ["run", _config(t, learner={"foundation": "x.model"})],
                              r"learner: foundation: only learner kind mace-finetune takes a foundation file, not mace"),
    "finetune-no-foundation": (lambda t, m: ["run", _config(t, learner={"kind": "mace-finetune"})],
                               r"learner: learner kind mace-finetune needs foundation"),
    "learner-hyperparameter": (lambda t, m: ["run", _config(t, learner={"kind": "chgnet-finetune",
                                                                       "hyperparameters": {"r_max": 5}})],
                               r"learner.hyperparameters.r_max: unknown key"),
    "one-head": (lambda t, m: ["run", _config(t, learner={"uncertainty": "shallow", "n_heads": 1})],
                 r"learner.n_heads: Input should be greater than or equal to 2"),
    "shallow-without-heads": (lambda t, m: ["run", _config(t, learner={"kind": "chgnet-finetune",
                                                                       "uncertainty": "shallow"})],
                              r"learner: uncertainty: shallow needs a learner that can have heads \(mace\); "
                              r"chgnet-finetune cannot"),
    "uncertainty-kind": (lambda t, m: ["run", _config(t, learner={"uncertainty": "bayes"})],
                         r"learner: unknown uncertainty 'bayes'; valid: committee, shallow, llpr"),
    "negative-temperature": (lambda t, m: ["run", _config(t, sampler={"temperatures": [-5]})], r"temperatures"),
    # campaigns in the store
    "same-name-other-config": (lambda t, m: ["run", _config(t, name="stored", sampler={"steps": 12})],
                               r"'stored' already exists with a different configuration"),
    "resume-other-config": (lambda t, m: ["run", _config(t, name="stored", initial={"n_per_structure": 5}), "--resume"],
                            r"'stored' already exists with a different configuration"),
    "status-unknown": (lambda t, m: ["status", "nosuch"], r"no campaign 'nosuch'.*known: stored"),
    "report-unknown": (lambda t, m: ["report", "nosuch", "-o", str(t / "r")], r"nosuch"),
    # settings and stores
    "read-only-store": (lambda t, m: (_read_only(t, m), ["import", _new_labels(t)])[1], r"read-only"),
    "disk-full": (lambda t, m: (_full_disk(t, m), ["import", _new_labels(t)])[1],
                  r"cannot grow: the database or disk is full"),
    "db-path-is-a-file": (lambda t, m: (m.setenv("ALMAT_DB_PATH", _write(t / "f", "x")), ["status"])[1], r"is a file"),
    "settings-file-missing": (lambda t, m: (m.setenv("ALMAT_CONFIG_FILE", str(t / "no.yaml")), ["status"])[1],
                              r"ALMAT_CONFIG_FILE points to a missing file"),
    "settings-file-yaml": (lambda t, m: (m.setenv("ALMAT_CONFIG_FILE", _write(t / "s.yaml", "db_path: [\n")), ["status"])[1],
                           r"settings: .*s.yaml: not valid YAML at line 2, column 1"),
    "uri-scheme": (lambda t, m: (m.setenv("ALMAT_MONGO_URI", uri_with_secret("h", scheme="http")), ["status"])[1],
                   r"mongo_uri must start with mongodb://"),
    "uri-malformed": (lambda t, m: (m.setenv("ALMAT_MONGO_URI", uri_with_secret("host:notaport")), ["status"])[1],
                      r"mongo_uri \(ALMAT_MONGO_URI\) is not a valid MongoDB URI: Port contains non-digit characters$"),
    "uri-unreachable": (lambda t, m: (m.setenv("ALMAT_MONGO_URI", uri_with_secret("127.0.0.1:1")),
                                      m.setenv("ALMAT_MONGO_TIMEOUT_MS", "300"), ["export", str(t / "o.jsonl")])[2],
                        r"cannot reach MongoDB at 127.0.0.1:1"),
    # export
    "export-unknown-campaign": (lambda t, m: ["export", str(t / "o.xyz"), "-c", "NOSUCH"],
                                r"no campaign 'NOSUCH' in the store; known: stored; nothing written"),
    "export-no-match": (lambda t, m: ["export", str(t / "o.xyz"), "--chemsys", "Li-P"], r"no labels match"),
    "export-exists": (lambda t, m: ["export", str(t / "labels.jsonl"), "-c", "stored"], r"exists.*--force"),
    "export-format": (lambda t, m: ["export", str(t / "o.cif"), "-c", "stored"], r"format|suffix"),
    # import
    "import-nan": (lambda t, m: ["import", _jsonl(t, lambda d: {**d, "energy": float("nan")})],
                   r"line 3: invalid label: energy is not finite"),
    "import-force-rows": (lambda t, m: ["import", _jsonl(t, lambda d: {**d, "forces": d["forces"][:-1]})],
                          r"line 3: invalid label: forces have shape \(3, 3\) for 4 atoms"),
    "import-stress": (lambda t, m: ["import", _jsonl(t, lambda d: {**d, "stress": [1.0] * 4})],
                      r"line 3: invalid label: stress: stress has 4 components; expected 6 \(Voigt\) or 9"),
    "import-element": (lambda t, m: ["import", _jsonl(t, lambda d: {**d, "structure": {**d["structure"], "sites": [
        {**d["structure"]["sites"][0], "species": [{"element": "Xq", "occu": 1}]}] + d["structure"]["sites"][1:]}})],
                       r"line 3: invalid label: .*Xq"),
    "import-not-json": (lambda t, m: ["import", _write(t / "x.jsonl", "{oops\n")], r"line 1: not JSON"),
    "import-truncated": (lambda t, m: ["import", _write(t / "x.jsonl", "\n".join(
        (t / "labels.jsonl").read_text().splitlines()[:-1]) + "\n")], r"no end line"),
    "import-missing": (lambda t, m: ["import", str(t / "none.jsonl")], r"no file .*none.jsonl"),
    "enumerate-missing": (lambda t, m: ["enumerate", str(t / "none.cif")], r"none.cif"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_leaves_the_store_intact(case, store, settings, tmp_path, monkeypatch):
    build, message = CASES[case]
    before = _snapshot(store)
    argv = build(tmp_path, monkeypatch)
    out = runner.invoke(app, argv)
    errors = [line for line in out.output.splitlines() if line.startswith("error")]
    assert out.exit_code != 0, out.output
    assert len(errors) == 1 and out.output.rstrip().endswith(errors[0]) and "Traceback" not in out.output, out.output
    assert re.search(message, errors[0]), errors[0]
    assert SECRET not in out.output
    monkeypatch.undo()  # back to the store of the fixture
    with CampaignDB.from_settings(settings) as db:
        assert _snapshot(db) == before


def test_import_of_stored_labels_says_they_were_skipped(store, tmp_path):
    before = _snapshot(store)
    out = runner.invoke(app, ["import", str(tmp_path / "labels.jsonl")])
    assert out.exit_code == 0, out.output
    assert "0 labels imported" in out.output and "4 already stored were skipped (--replace overwrites them)" in out.output
    assert _snapshot(store) == before
    out = runner.invoke(app, ["import", str(tmp_path / "labels.jsonl"), "--replace"])
    assert out.exit_code == 0 and "4 already stored were replaced" in out.output


def test_a_failed_job_is_named_with_its_exception_and_the_campaign_resumes_to_the_same_error(db, tmp_path):
    si = {"bulk": {"name": "Si", "crystalstructure": "diamond", "a": 5.43}}  # EMT has no Si: every label fails
    cfg = _config(tmp_path, name="si", structures=[si])
    why = ("campaign si did not finish: job 'train it0' failed with ValueError: only 0 ok label(s) to train on; "
           "check the oracle (failed labels carry a reason)")
    for argv in (["run", cfg], ["run", cfg, "--resume"]):
        out = runner.invoke(app, argv)
        assert out.exit_code == 1 and why in " ".join(out.output.split()), out.output
    failed = list(db.labels.query({"campaign": "si"}))
    assert len(failed) == 4 and all("No EMT-potential for Si" in d["reason"] for d in failed)  # labelled once
    doc = db.campaigns.query_one({"name": "si"})
    assert doc["status"] == "failed" and doc["stop_reason"].startswith("did not finish: job 'train it0' failed")
    verbose = runner.invoke(app, ["run", cfg, "--resume", "-v"])  # -v adds jobflow's own log
    assert verbose.exit_code == 1 and "Starting job - train it0" in verbose.output, verbose.output
