"""Hand a stored model out for use outside almat (``almat export-model``).

What the file is, is its learner's (``Learner.export``): DeePMD writes the frozen TensorFlow graph that LAMMPS'
``pair_style deepmd`` and ``dp test`` read (``.pb``); a torch learner (MACE) writes its whole module, as
``mace_run_train``'s ``.model`` files are. The model is read from the store in almat's safe format first, so
only a model almat stored can be exported; the file is written whole or not at all.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from almat.learner.committee import load_model
from almat.learner.registry import learner_of
from almat.schemas import ModelDoc
from almat.stores import CampaignDB, get_blob


def pick_model(db: CampaignDB, campaign: str, model_id: str | None = None) -> ModelDoc:
    """The model ``model_id`` of the campaign, or by default its production model (``finish:``), else its latest
    committee's first member."""
    if model_id is not None:
        raw = db.models.query_one({"model_id": model_id, "campaign": campaign})
        if raw is None:
            raise ValueError(f"campaign {campaign!r} has no model {model_id!r}")
        return ModelDoc.from_store(raw)
    docs = [ModelDoc.from_store(d) for d in db.models.query({"campaign": campaign})]
    production = [d for d in docs if d.role == "production"]
    if production:
        return max(production, key=lambda d: d.created_at)
    members = [d for d in docs if d.role == "committee" and d.iteration is not None]
    if not members:
        raise ValueError(f"campaign {campaign!r} has no trained committee (no models stored)")
    return min(members, key=lambda d: (-d.iteration, d.committee_index))


def export_model(db: CampaignDB, campaign: str, out: Path, model_id: str | None = None,
                 force: bool = False) -> dict:
    """Write the model (``pick_model``) to ``out`` in its learner's format; what was written."""
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists (--force overwrites it)")
    doc = pick_model(db, campaign, model_id)
    data, kind = _trainer_file(db, doc)
    if data is None:
        data, kind = learner_of(doc.architecture).export(load_model(db.data, doc))
    partial = out.with_name(f".{out.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, out)
    return {"path": str(out), "model_id": doc.model_id, "iteration": doc.iteration,
            "committee_index": doc.committee_index, "role": doc.role, "architecture": doc.architecture, "format": kind,
            "bytes": len(data)}


def _trainer_file(db: CampaignDB, doc: ModelDoc) -> tuple[bytes | None, str]:
    """The file a production model's own trainer wrote for users (its stage-two ``.model`` when there is one,
    never the compiled form), or (None, "") for a model without one."""
    plain = sorted(name for name in doc.files if "compiled" not in name)
    if not plain:
        return None, ""
    name = next((n for n in plain if "stagetwo" in n), plain[0])
    return base64.b64decode(get_blob(db.data, doc.files[name])), f"{name} written by {doc.hyperparameters.get('trainer')}"
