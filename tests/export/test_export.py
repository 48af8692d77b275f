"""Export (extxyz for MACE, ASE db, JSON lines) and all-or-nothing import into another store."""

import json

import ase.db
import ase.io
import numpy as np
import pytest
from ase.build import bulk

from almat.export import LabelImportError, export_command, export_labels, import_command, import_labels
from almat.oracle import CalculatorSpec, label_with_calculator
from almat.query import MixedOraclesError, query_labels
from almat.schemas import LabelDoc, StructureSource, to_structure
from almat.settings import AlmatSettings
from almat.stores import CampaignDB

EMT = CalculatorSpec("ase.calculators.emt", "EMT")
EMT2 = CalculatorSpec("ase.calculators.emt", "EMT", {"asap_cutoff": True})


def _structures(n, seed, symbols=("Cu",)):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
        atoms.symbols[: len(symbols)] = list(symbols)
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        out.append(to_structure(atoms))
    return out


@pytest.fixture
def labels(db):
    sources = [StructureSource.init, StructureSource.md, StructureSource.perturbed]
    labs = [label_with_calculator(s, EMT, campaign="ex", iteration=i % 2, source=sources[i % 3])
            for i, s in enumerate(_structures(5, 0) + _structures(3, 1, ("Au", "Au")))]
    reused = labs[0].model_copy(update={"campaign": "ex2", "label_id": "", "reused_from": labs[0].label_id,
                                        "wall_time": 0.0})
    reused = LabelDoc.model_validate(reused.model_dump())  # recompute its label id
    failed = label_with_calculator(to_structure(bulk("Si", "diamond", a=5.43)), EMT, campaign="ex", iteration=1)
    other = [label_with_calculator(s, EMT2, campaign="ex", iteration=2) for s in _structures(2, 5)]
    db.upsert("labels", labs + [reused, failed] + other)
    return {"ok": labs, "reused": reused, "failed": failed, "other": other}


@pytest.fixture
def other_db(tmp_path):
    s = AlmatSettings(db_path=tmp_path / "other_db", run_dir=tmp_path / "other_runs")
    database = CampaignDB.from_settings(s).connect()
    yield database
    database.close()


def _dump(label: LabelDoc) -> dict:
    d = label.model_dump()
    d["structure"] = label.structure.as_dict()
    return d


def test_jsonl_round_trip_is_identical_and_refuses_existing_files(db, other_db, labels, tmp_path):
    out = tmp_path / "labels.jsonl"
    res = export_labels(db, out, status=None, allow_mixed_oracles=True)
    assert res.n_labels == 8 + 1 + 1 + 2 and res.format == "jsonl"
    assert import_labels(other_db, out) == {"n_labels": 12, "n_new": 12, "n_replaced": 0, "n_skipped": 0,
                                            "existing_ids": []}
    src = {d.label_id: d for d in query_labels(db, status=None, allow_mixed_oracles=True)}
    dst = {d.label_id: d for d in query_labels(other_db, status=None, allow_mixed_oracles=True)}
    assert sorted(src) == sorted(dst)
    for label_id, doc in src.items():
        assert _dump(doc) == _dump(dst[label_id])
    assert dst[labels["reused"].label_id].reused_from == labels["ok"][0].label_id
    # importing again skips what is stored, saying so; --replace overwrites; never duplicates
    again = import_labels(other_db, out)
    assert (again["n_new"], again["n_skipped"], again["n_replaced"]) == (0, 12, 0)
    assert again["existing_ids"] == sorted(src)
    assert import_labels(other_db, out, replace=True)["n_replaced"] == 12
    assert other_db.labels.count({}) == 12
    # an existing output is refused unless forced
    with pytest.raises(FileExistsError, match="force"):
        export_labels(db, out, campaign="ex", oracle_fingerprint=EMT.fingerprint)
    assert export_labels(db, out, force=True, campaign="ex", oracle_fingerprint=EMT.fingerprint).n_labels == 8
    assert len(out.read_text().splitlines()) == 8 + 2


def test_extxyz_is_ready_for_mace(db, labels, tmp_path):
    from mace.data.utils import KeySpecification, load_from_xyz

    out = tmp_path / "train.xyz"
    with pytest.raises(MixedOraclesError):
        export_labels(db, out, campaign="ex")  # two oracle settings in campaign ex
    assert not out.exists()
    assert export_labels(db, out, campaign="ex", oracle_fingerprint=EMT.fingerprint).n_labels == 8
    want = {lab.label_id: lab for lab in labels["ok"]}
    frames = ase.io.read(out, index=":")
    assert sorted(a.info["label_id"] for a in frames) == sorted(want)
    for atoms in frames:
        lab = want[atoms.info["label_id"]]
        assert atoms.info["config_type"] == lab.source.value
        assert atoms.info["oracle_fingerprint"] == EMT.fingerprint and atoms.info["campaign"] == "ex"
        assert "energy" not in atoms.info and atoms.calc is None
    # MACE's own loader with its default keys finds energies, forces and stresses
    _, configs = load_from_xyz(str(out), KeySpecification.from_defaults())
    assert len(configs) == 8
    by_energy = {round(lab.energy, 10): lab for lab in labels["ok"]}
    for cfg in configs:
        lab = by_energy[round(float(cfg.properties["energy"]), 10)]
        np.testing.assert_allclose(cfg.properties["forces"], lab.forces, atol=1e-8)
        s = cfg.properties["stress"]
        full = np.array([[s[0], s[5], s[4]], [s[5], s[1], s[3]], [s[4], s[3], s[2]]])
        np.testing.assert_allclose(full, lab.stress, atol=1e-10)
        assert cfg.property_weights["energy"] == 1.0 and cfg.property_weights["forces"] == 1.0
        np.testing.assert_allclose(cfg.positions, lab.structure.cart_coords, atol=1e-8)


def test_ase_db_export(db, labels, tmp_path):
    out = tmp_path / "labels.db"
    assert export_labels(db, out, oracle_fingerprint=EMT.fingerprint, campaign="ex").n_labels == 8
    want = {lab.label_id: lab for lab in labels["ok"]}
    with ase.db.connect(out) as con:
        rows = list(con.select())
        assert len(rows) == 8
        for row in rows:
            lab = want[row.label_id]
            assert row.energy == pytest.approx(lab.energy) and row.config_type == lab.source.value
            np.testing.assert_allclose(row.forces, lab.forces)
            assert row.data["oracle_settings"] == lab.oracle_settings
    with pytest.raises(FileExistsError):
        export_labels(db, out, oracle_fingerprint=EMT.fingerprint)


def _rewrite(path, lineno, fn):
    lines = path.read_text().splitlines()
    lines[lineno - 1] = fn(lines[lineno - 1])
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("damage, message", [
    (lambda d: {**d, "colour": "red"}, r"line 3: unknown field\(s\) 'colour'"),
    (lambda d: {k: v for k, v in d.items() if k != "oracle_fingerprint"}, r"line 3: missing field\(s\) 'oracle_fingerprint'"),
    (lambda d: {**d, "energy": "high"}, r"line 3: invalid label"),
    (lambda d: {**d, "structure_hash": "0" * 24}, r"line 3: structure_hash .* does not match"),
    (lambda d: {**d, "energy": float("nan")}, r"line 3: invalid label: energy is not finite"),
    (lambda d: {**d, "forces": [[0.0, 0.0, float("inf")]] + d["forces"][1:]}, r"line 3: .*forces is not finite"),
    (lambda d: {**d, "forces": d["forces"][:-1]}, r"line 3: invalid label: forces have shape \(3, 3\) for 4 atoms"),
    (lambda d: {**d, "stress": [0.1] * 5}, r"line 3: invalid label: stress: stress has 5 components; expected 6"),
    (lambda d: {**d, "structure": {**d["structure"], "sites": [{**d["structure"]["sites"][0], "species": [
        {"element": "Xq", "occu": 1}]}] + d["structure"]["sites"][1:]}}, r"line 3: invalid label: .*Xq"),
])
def test_import_rejects_the_whole_file_with_the_line_number(db, other_db, labels, tmp_path, damage, message):
    out = tmp_path / "labels.jsonl"
    export_labels(db, out, campaign="ex", oracle_fingerprint=EMT.fingerprint)
    _rewrite(out, 3, lambda line: json.dumps(damage(json.loads(line))))
    with pytest.raises(LabelImportError, match=message):
        import_labels(other_db, out)
    assert other_db.labels.count({}) == 0  # nothing half-imported


def test_import_rejects_truncated_or_foreign_files(db, other_db, labels, tmp_path):
    out = tmp_path / "labels.jsonl"
    export_labels(db, out, campaign="ex", oracle_fingerprint=EMT.fingerprint)
    lines = out.read_text().splitlines()
    (tmp_path / "cut.jsonl").write_text("\n".join(lines[:-3]) + "\n")
    with pytest.raises(LabelImportError, match="no end line"):
        import_labels(other_db, tmp_path / "cut.jsonl")
    (tmp_path / "dup.jsonl").write_text("\n".join(lines[:3] + [lines[2]] + lines[3:]) + "\n")
    with pytest.raises(LabelImportError, match="line 4: label_id .* repeats line 3"):
        import_labels(other_db, tmp_path / "dup.jsonl")
    (tmp_path / "foreign.jsonl").write_text('{"hello": 1}\n')
    with pytest.raises(LabelImportError, match="line 1: not an almat labels export"):
        import_labels(other_db, tmp_path / "foreign.jsonl")
    with pytest.raises(LabelImportError, match="JSON-lines"):
        import_labels(other_db, tmp_path / "train.xyz")
    assert other_db.labels.count({}) == 0


def test_commands(db, labels, tmp_path, settings):
    other = AlmatSettings(db_path=tmp_path / "cmd_db", run_dir=tmp_path / "cmd_runs")
    out = tmp_path / "cmd.jsonl"
    res = export_command(out, campaign=["ex"], oracle_fingerprint=EMT.fingerprint, settings=settings)
    assert res == {"path": str(out), "format": "jsonl", "n_labels": 8}
    assert import_command(out, settings=other)["n_new"] == 8
    with CampaignDB.from_settings(other) as db2:
        assert sorted(query_labels(db2, campaign="ex").ids()) == sorted(lab.label_id for lab in labels["ok"])
    with pytest.raises(FileExistsError):
        export_command(out, settings=settings)
    assert export_command(tmp_path / "t.xyz", chemsys="Au-Cu", settings=settings)["n_labels"] == 3


def test_nft_chunk_weights_are_exported(db, tmp_path, caplog):
    """A chunk's loss weights travel with it: MACE reads config_energy_weight; force_weights are arrays."""
    from mace.data.utils import KeySpecification, load_from_xyz

    s = _structures(1, 3)[0]
    weights = [1.0 if i < 2 else 0.0 for i in range(len(s))]
    chunk = label_with_calculator(s, EMT, campaign="nft", iteration=0, source=StructureSource.nft_chunk)
    chunk = LabelDoc.model_validate({**chunk.model_dump(), "force_weights": weights, "energy_weight": 0.0})
    db.upsert("labels", [chunk])
    out = tmp_path / "chunks.xyz"
    with caplog.at_level("WARNING", logger="almat.export.io"):
        assert export_labels(db, out, campaign="nft").n_labels == 1
    assert "per-atom force weights" in caplog.text
    atoms = ase.io.read(out)
    np.testing.assert_array_equal(atoms.arrays["force_weights"], weights)
    assert atoms.info["config_type"] == "nft-chunk"
    _, (cfg,) = load_from_xyz(str(out), KeySpecification.from_defaults())
    assert cfg.property_weights["energy"] == 0.0 and cfg.property_weights["forces"] == 1.0
    # the lossless format keeps them too
    back = tmp_path / "chunks.jsonl"
    export_labels(db, back, campaign="nft")
    from almat.export import read_jsonl

    (again,) = read_jsonl(back)
    assert again.force_weights == weights and again.energy_weight == 0.0
    assert again.to_atoms().arrays["force_weights"].tolist() == weights
