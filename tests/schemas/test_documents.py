import numpy as np
import pytest
from ase.build import bulk
from pydantic import ValidationError

from almat.schemas import (
    IterationDoc,
    LabelDoc,
    LabelStatus,
    ModelDoc,
    StructureDoc,
    structure_hash,
    to_atoms,
    to_structure,
)


@pytest.fixture
def nacl():
    return bulk("NaCl", "rocksalt", a=5.64, cubic=True)


def test_hash_is_stable_under_permutation_and_noise(nacl):
    h = structure_hash(nacl)
    perm = nacl[np.random.default_rng(0).permutation(len(nacl))]
    assert structure_hash(perm) == h
    noisy = nacl.copy()
    noisy.positions += 1e-8
    assert structure_hash(noisy) == h
    shifted = nacl.copy()
    shifted.positions[0] += [0.0, 0.0, 0.01]
    assert structure_hash(shifted) != h
    assert structure_hash(to_structure(nacl)) == h  # pymatgen and ASE agree


def test_wrapped_coordinates_hash_alike(nacl):
    moved = nacl.copy()
    moved.positions[1] += moved.cell[0]  # same site, one cell over
    assert structure_hash(moved) == structure_hash(nacl)


def test_structure_doc_derived_fields(nacl):
    doc = StructureDoc(structure=to_structure(nacl), source="md", campaign="c", iteration=0)
    assert doc.formula == "NaCl" and doc.chemsys == "Cl-Na" and doc.elements == ["Cl", "Na"]
    assert doc.natoms == 8 and doc.structure_hash == structure_hash(nacl)
    back = StructureDoc.from_store(doc.to_store())
    assert back.structure == doc.structure and back.source.value == "md"


def test_label_validation_and_roundtrip(nacl):
    s = to_structure(nacl)
    forces = np.zeros((8, 3)).tolist()
    ok = LabelDoc(structure=s, oracle="o", oracle_fingerprint="f", energy=-1.5, forces=forces, campaign="c")
    same = LabelDoc(structure=s, oracle="o", oracle_fingerprint="f", energy=-1.5, forces=forces, campaign="c")
    assert ok.label_id == same.label_id  # a rerun writes the same document
    other = LabelDoc(structure=s, oracle="o", oracle_fingerprint="g", energy=-1.5, forces=forces, campaign="c")
    assert other.label_id != ok.label_id  # another oracle setting is another label
    stored = ok.to_store()
    assert stored["status"] == "ok" and isinstance(stored["structure"], dict)
    back = LabelDoc.from_store({**stored, "_id": "x"})
    assert back.energy == -1.5 and back.ok
    atoms = back.to_atoms()
    assert atoms.get_potential_energy() == -1.5 and atoms.info["label_id"] == ok.label_id
    with pytest.raises(ValidationError, match="reason"):
        LabelDoc(structure=s, oracle="o", oracle_fingerprint="f", status=LabelStatus.failed)
    with pytest.raises(ValidationError, match="energy and forces"):
        LabelDoc(structure=s, oracle="o", oracle_fingerprint="f")
    with pytest.raises(ValidationError, match="extra"):
        LabelDoc(structure=s, oracle="o", oracle_fingerprint="f", energy=1.0, forces=forces, bogus=1)


def test_model_and_iteration_docs_roundtrip():
    m = ModelDoc(weights_blob_id="b", training_label_ids=["a", "b"], validation_metrics={"force_rmse": 0.1})
    assert ModelDoc.from_store(m.to_store()) == m
    it = IterationDoc(campaign="c", iteration=2, trust_lo=0.05, trust_hi=0.3, accurate_ratio=0.5)
    assert IterationDoc.from_store(it.to_store()).accurate_ratio == 0.5


def test_disordered_structure_cannot_become_atoms():
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(3), [{"Li": 0.5}], [[0, 0, 0]])
    with pytest.raises(ValueError, match="disordered"):
        to_atoms(s)
