"""The campaign's last job (``finish:``): its production model, trained on all its ok labels by a library's
own trainer (``almat.learner.production``) once the loop stops, scored on the campaign's calibration frames
(held out from its training), and stored like any model (safe format) with the trainer's own files for users.
"""

from __future__ import annotations

import base64
import logging
import tempfile
from pathlib import Path
from typing import Any

from almat.learner.committee import save_model
from almat.learner.registry import load_production_trainer
from almat.schemas import CampaignDoc, LabelDoc, ModelDoc
from almat.stores import CampaignDB, put_blob, require_db, store_job

logger = logging.getLogger(__name__)

#: the ``ModelDoc.role`` of a production model
PRODUCTION = "production"


def check_finish(finish) -> None:
    """Refuse, in one line, a ``finish`` section whose trainer is unknown or has no such option."""
    if finish is not None:
        load_production_trainer(finish.trainer).check_options(finish.options)


def _labels(db: CampaignDB, campaign: str) -> tuple[list[LabelDoc], list[LabelDoc]]:
    """(training labels, held-out calibration labels): all of the campaign's ok labels."""
    held = {i for d in db.iterations.query({"campaign": campaign}, properties=["calibration_label_ids"])
            for i in d.get("calibration_label_ids") or []}
    labels = [LabelDoc.from_store(d) for d in db.labels.query({"campaign": campaign, "status": "ok"})]
    labels.sort(key=lambda lab: lab.label_id)
    return [lab for lab in labels if lab.label_id not in held], [lab for lab in labels if lab.label_id in held]


def _store(db: CampaignDB, campaign: str, result, train: list[LabelDoc], test: list[LabelDoc], finish,
           iteration: int | None) -> ModelDoc:
    files = {name: put_blob(db.data, base64.b64encode(data).decode("ascii"), kind="model-file", filename=name,
                            campaign=campaign) for name, data in result.files.items()}
    blob_id = save_model(db.data, result.model, campaign=campaign, role=PRODUCTION)
    doc = ModelDoc(campaign=campaign, iteration=iteration, role=PRODUCTION,
                   architecture=result.model.almat_architecture["class"],
                   hyperparameters={"trainer": finish.trainer, "options": result.options},
                   seed=finish.seed, elements=sorted({s for lab in train for s in lab.elements}),
                   training_label_ids=[lab.label_id for lab in train],
                   validation_label_ids=[lab.label_id for lab in test], validation_metrics=result.metrics,
                   n_parameters=sum(p.numel() for p in result.model.parameters()), weights_blob_id=blob_id,
                   files=files, wall_time=result.wall_time)
    db.upsert("models", [doc])
    return doc


@store_job
def train_production(config, campaign: str | None = None) -> dict[str, Any]:
    """Train, score and store the production model of the campaign ``config.name`` (``finish:``); its model
    id and held-out errors. A rerun replaces the campaign's production model."""
    name, finish = config.name, config.finish
    db = require_db()
    try:
        train, test = _labels(db, name)
        if len(train) < 2:
            raise ValueError(f"campaign {name}: only {len(train)} ok label(s) to train the production model on")
        logger.info("campaign %s: training the production model (%s) on %d labels, %d held out", name,
                    finish.trainer, len(train), len(test), extra={"almat_progress": True})
        trainer = load_production_trainer(finish.trainer)
        with tempfile.TemporaryDirectory(prefix="almat-production-") as tmp:
            result = trainer.train([lab.to_atoms() for lab in train], [lab.to_atoms() for lab in test],
                                   finish.options, Path(tmp), seed=finish.seed)
        raw = db.campaigns.query_one({"name": name})
        camp = CampaignDoc.from_store(raw) if raw is not None else None
        doc = _store(db, name, result, train, test, finish, None)
        if camp is not None:
            camp.production_model_id = doc.model_id
            db.upsert("campaigns", [camp])
        logger.info("campaign %s: production model %s, held-out force RMSE %s eV/Å", name, doc.model_id,
                    f"{result.metrics['force_rmse']:.4f}" if "force_rmse" in result.metrics else "n/a")
        return {"model_id": doc.model_id, "metrics": result.metrics, "files": sorted(result.files)}
    finally:
        db.close()
