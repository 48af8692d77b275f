"""Convert models that almat 0.1 stored as whole pickled modules into the safe format
(state dict + architecture record, loaded with ``weights_only=True``).

Reading an old model unpickles it, which can run any code its author put there: run this only on a
database you trust, and say so with ``--trust``::

    python scripts/convert_models.py --trust [--campaign NAME]

It uses the store of the usual settings (``ALMAT_DB_PATH`` / ``ALMAT_MONGO_URI``). Each converted model
keeps its ``model_id``; its new weights go to a new blob and the old blob is removed.
"""

from __future__ import annotations

import argparse
import base64
import io

import torch

from almat.learner.committee import save_model
from almat.learner.hyperparameters import MaceHyperParameters
from almat.learner.mace import mace_architecture
from almat.learner.models import UnsafeModelError, model_from_architecture, model_from_bytes
from almat.schemas import ModelDoc
from almat.stores import CampaignDB, get_blob


def convert(db: CampaignDB, doc: ModelDoc) -> bool:
    """Convert one model; False when it is already in the safe format."""
    blob = base64.b64decode(get_blob(db.data, doc.weights_blob_id))
    try:
        model_from_bytes(blob)
        return False
    except UnsafeModelError:
        pass
    old = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)  # trusted by --trust
    hp = MaceHyperParameters(**{**doc.hyperparameters, "dtype": str(next(old.parameters()).dtype).split(".")[-1]})
    zs = [int(z) for z in old.atomic_numbers.tolist()]
    record = mace_architecture(hp, zs, [0.0] * len(zs), float(old.interactions[0].avg_num_neighbors), 1.0, 0.0)
    new = model_from_architecture(record)
    new.load_state_dict(old.state_dict(), strict=True)  # E0s, scale and shift are buffers: they come along
    blob_id = save_model(db.data, new, campaign=doc.campaign, iteration=doc.iteration,
                         committee_index=doc.committee_index)
    db.data.remove_docs({"blob_uuid": doc.weights_blob_id})
    doc.weights_blob_id = blob_id
    db.upsert("models", [doc])
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trust", action="store_true", help="I trust this database: unpickle its old models")
    parser.add_argument("--campaign", help="Only this campaign's models")
    args = parser.parse_args()
    if not args.trust:
        parser.error("old models are pickles that can run code when loaded: pass --trust for a database you trust")
    db = CampaignDB.from_settings(check=True).connect()
    try:
        criteria = {"campaign": args.campaign} if args.campaign else {}
        docs = [ModelDoc.from_store(d) for d in db.models.query(criteria)]
        n = sum(convert(db, d) for d in docs)
    finally:
        db.close()
    print(f"{n} of {len(docs)} model(s) converted")


if __name__ == "__main__":
    main()
