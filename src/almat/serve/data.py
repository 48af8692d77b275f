"""What the pages show, read from the stored records as plain dicts (no model, no torch).

Each campaign kind (``almat.campaign.kinds``) names its page's table and its figures; ``CHARTS`` gives
each figure's values, from ``almat.report`` (``learning_curve_data``, ``deviation_data``,
``calibration_data``, ``learning_curves``); the browser draws them. Campaign names are only ever
compared with plain string equality (``{"name": name}`` with ``name`` a ``str``).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable

import numpy as np

from almat.campaign.kinds import KINDS, CampaignKind
from almat.campaign.views import when as _when
from almat.launch.state import campaign_state
from almat.report.learning import learning_curves
from almat.report.plots import _plot_edges, calibration_data, deviation_data, learning_curve_data, load_iterations
from almat.learner.settings import uncertainty_label
from almat.stores import CampaignDB
from almat.stores.ledger import campaign_cost

LABEL_FIELDS = ["label_id", "iteration", "source", "oracle", "oracle_fingerprint", "status", "reason", "formula",
                "natoms", "reused_from"]
MODEL_FIELDS = ["model_id", "iteration", "committee_index", "validation_metrics", "epochs_trained", "n_parameters",
                "device", "wall_time", "warm_started_from", "seed", "architecture"]


class NotFound(LookupError):
    """No campaign of that name; ``names`` are the ones that exist."""

    def __init__(self, name: str, names: list[str]):
        super().__init__(name)
        self.name, self.names = name, names


def clean(obj: Any) -> Any:
    """JSON-safe: non-finite floats become None, numpy scalars Python ones, dates ISO strings."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    return obj


def kind_of(doc: dict) -> str:
    """The name of a stored campaign's kind (md for an unknown one: the page shows what it can)."""
    kind = (doc.get("config") or {}).get("kind", "md")
    return kind if kind in KINDS else "md"


def _records(db: CampaignDB, kind: str, name: str, fields: list[str]) -> list[dict]:
    return list(getattr(db, KINDS[kind].records).query({"campaign": name}, properties=fields))


def campaign_list(db: CampaignDB, chemsys: str | None = None, status: str | None = None) -> dict[str, Any]:
    """Every campaign (newest first), filtered by chemistry and status, with the filters' choices."""
    rows = []
    for doc in db.campaigns.query({}, properties=["name", "config", "chemsys", "oracle", "status",
                                                  "n_iterations", "n_labels", "updated_at", "created_at"]):
        kind = kind_of(doc)
        its = _records(db, kind, doc["name"], ["iteration", "created_at"])
        last = max(its, key=lambda r: r["iteration"], default=None)
        updated = max([str(doc.get("updated_at") or "")] + [str(r.get("created_at") or "") for r in its])
        state = campaign_state(db, doc)[0]  # "killed" when its process is gone
        running = state in ("running", "created")
        stage = f"iteration {last['iteration'] + 1 if last else 0} running" if running else f"{len(its)} iteration(s)"
        rows.append({"name": doc["name"], "kind": kind, "chemsys": doc.get("chemsys") or "", "oracle": doc.get("oracle")
                     or "", "status": state, "stage": stage, "iterations": len(its),
                     "labels": doc.get("n_labels", 0), "updated": _when(updated)})
    choices = {"chemsys": sorted({r["chemsys"] for r in rows}), "status": sorted({r["status"] for r in rows})}
    shown = [r for r in rows if (not chemsys or r["chemsys"] == chemsys) and (not status or r["status"] == status)]
    shown.sort(key=lambda r: r["updated"], reverse=True)
    return {"campaigns": shown, "choices": choices, "filters": {"chemsys": chemsys or "", "status": status or ""},
            "n_total": len(rows)}


def campaign_names(db: CampaignDB) -> list[str]:
    return sorted(d["name"] for d in db.campaigns.query({}, properties=["name"]))


def campaign_doc(db: CampaignDB, name: str) -> dict:
    if not isinstance(name, str):
        raise NotFound(str(name), campaign_names(db))
    doc = db.campaigns.query_one({"name": name})
    if doc is None:
        raise NotFound(name, campaign_names(db))
    return doc


def stamp(db: CampaignDB, name: str | None = None) -> str:
    """Changes whenever what a page shows changes: pages poll it and refresh when it moves."""
    if name is None:
        docs = db.campaigns.query({}, properties=["name", "status", "updated_at", "n_labels", "n_iterations"])
        parts = sorted(f"{d['name']}|{d.get('status')}|{d.get('updated_at')}|{d.get('n_labels')}" for d in docs)
        parts += [str(getattr(db, kind.records).count({})) for kind in KINDS.values()]
        return str(hash("\n".join(parts)))
    doc = campaign_doc(db, name)
    counts = [getattr(db, KINDS[kind_of(doc)].records).count({"campaign": name}), db.labels.count({"campaign": name}),
              db.models.count({"campaign": name}), db.ledger.count({"campaign": name})]
    return str(hash(f"{doc.get('status')}|{doc.get('updated_at')}|{doc.get('n_labels')}|{counts}"))


def labels_summary(db: CampaignDB, name: str) -> dict[str, Any]:
    """Labels per source and oracle (ok and failed), and the failed ones with their reasons."""
    docs = list(db.labels.query({"campaign": name}, properties=LABEL_FIELDS))
    by = Counter((str(d.get("source") or "unknown"), f"{d.get('oracle')} [{d.get('oracle_fingerprint')}]",
                  str(d.get("status") or "ok")) for d in docs)
    rows = [{"source": s, "oracle": o, "ok": by.get((s, o, "ok"), 0), "failed": by.get((s, o, "failed"), 0)}
            for s, o in sorted({(s, o) for s, o, _ in by})]
    failed = sorted((d for d in docs if d.get("status") == "failed"),
                    key=lambda d: (d.get("iteration") if d.get("iteration") is not None else -9, d["label_id"]))
    reasons = Counter(str(d.get("reason") or "").split("\n")[0][:120] for d in failed)
    return {"by_source": rows, "n_ok": sum(r["ok"] for r in rows), "n_failed": len(failed),
            "n_reused": sum(1 for d in docs if d.get("reused_from")),
            "failed": [{k: d.get(k) for k in ("label_id", "iteration", "source", "formula", "natoms", "reason")}
                       for d in failed],
            "reasons": reasons.most_common(), "fingerprints": sorted({d.get("oracle_fingerprint") or "" for d in docs
                                                                      if d.get("status") == "ok"})}


def cost_panel(db: CampaignDB, name: str) -> dict[str, Any]:
    """The campaign's cost (``almat.stores.ledger.cost_summary``: per iteration and in total, core-hours by
    what the jobs did), without the entries themselves (``almat status NAME --json`` has them)."""
    cost = campaign_cost(db, name)
    return {**{k: cost[k] for k in ("iterations", "total", "hosts", "queues")}, "n_entries": len(cost["entries"])}


def _models(db: CampaignDB, name: str) -> list[dict]:
    docs = db.models.query({"campaign": name}, properties=MODEL_FIELDS)
    return sorted(({k: d.get(k) for k in MODEL_FIELDS} for d in docs),
                  key=lambda m: (m["iteration"] if m["iteration"] is not None else -1, m["committee_index"] or 0))


# -- each figure's values, by its name in the kinds' ``figures`` (a figure the pages don't draw has none) --

def _learning_chart(records: list, config: dict) -> dict[str, Any]:
    return {"learning_curve": learning_curve_data(records)}


def _deviation_chart(records: list, config: dict) -> dict[str, Any]:
    deviation = deviation_data(records)
    for d in deviation:
        d["plot_edges"] = [float(e) for e in _plot_edges(d["bin_edges"])]
    return {"deviation": deviation}


def _calibration_chart(records: list, config: dict) -> dict[str, Any]:
    """The calibration per iteration (table and trend) and each calibration's held-out frames."""
    scatter = [{"iteration": it.iteration, "k": it.calibration.factor, "q": it.calibration.quantile,
                "coverage": it.calibration.coverage, "empirical_coverage": it.calibration.empirical_coverage,
                "spearman": it.calibration.spearman, "x": [float(v) for v in it.calibration.calibrated(
                    it.calibration.predicted)], "y": list(it.calibration.observed)}
               for it in records if it.calibration is not None]
    conv = config.get("convergence") or {}
    return {"calibration": calibration_data(records), "calibration_points": scatter,
            "force_tolerance": conv.get("force_tolerance"), "conv_accuracy": conv.get("conv_accuracy")}


def _pool_chart(records: list, config: dict) -> dict[str, Any]:
    curve = learning_curves(records)[records[0].campaign] if records else {
        "iteration": [], "n_labels": [], "force_rmse": [], "energy_rmse_per_atom": []}
    return {"pool_curve": curve, "target_force_rmse": config.get("target_force_rmse")}


def _nft_chart(records: list, config: dict) -> dict[str, Any]:
    boxes = []
    for r in records:
        u = np.asarray(r.atomic_uncertainties, dtype=float)
        p5, p25, p50, p75, p95 = (np.percentile(u, [5, 25, 50, 75, 95]) if u.size else [None] * 5)
        boxes.append({"iteration": r.iteration, "p5": p5, "p25": p25, "p50": p50, "p75": p75, "p95": p95,
                      "max": r.max_uncertainty, "threshold": r.threshold})
    return {"nft_boxes": boxes, "stop_delta": (config.get("convergence") or {}).get("stop_delta")}


#: figure name -> ``(records, campaign config) -> the page's values for it``
CHARTS: dict[str, Callable[[list, dict], dict[str, Any]]] = {
    "learning_curve": _learning_chart, "deviation": _deviation_chart, "calibration": _calibration_chart,
    "pool_learning_curve": _pool_chart, "nft_progress": _nft_chart}


def _kind_detail(db: CampaignDB, name: str, kind: CampaignKind, config: dict) -> dict[str, Any]:
    """The kind's iteration table (``columns``: title, row key, style, short title; ``iterations``: one row each;
    ``legend``: what the short titles mean) and its figures' values."""
    records = load_iterations(db, name, kind.name)
    row = kind.page_row or (lambda r: r.model_dump(mode="json"))
    out: dict[str, Any] = {"iterations": [row(r) for r in records], "figures": list(kind.figures),
                           "columns": [[*c, kind.short.get(c[1], c[0])] for c in kind.page_columns],
                           "legend": "; ".join(t for t in (kind.legend, kind.page_legend) if t)}
    for figure in kind.figures:
        out.update(CHARTS[figure](records, config) if figure in CHARTS else {})
    return out


def campaign_detail(db: CampaignDB, name: str) -> dict[str, Any]:
    """Everything the campaign page shows."""
    doc = campaign_doc(db, name)
    kind, config = kind_of(doc), doc.get("config") or {}
    state, why = campaign_state(db, doc)
    out = {"name": doc["name"], "kind": kind, "status": state,
           "chemsys": doc.get("chemsys") or "", "oracle": doc.get("oracle") or "",
           "oracle_fingerprint": doc.get("oracle_fingerprint") or "", "n_iterations": doc.get("n_iterations", 0),
           "n_labels": doc.get("n_labels", 0), "stop_reason": why or "", "uncertainty": uncertainty_label(config),
           "created": _when(doc.get("created_at")), "updated": _when(doc.get("updated_at"))}
    out.update(_kind_detail(db, name, KINDS[kind], config))
    out["labels"] = labels_summary(db, name)
    out["models"] = _models(db, name)
    out["cost"] = cost_panel(db, name)
    return out


# -- the FireWorks queue --------------------------------------------------------------------------------

QUEUE_STATES = ("READY", "RESERVED", "RUNNING", "COMPLETED", "FIZZLED", "WAITING", "PAUSED", "DEFUSED", "ARCHIVED")


def _fizzle_error(launch: dict | None) -> str:
    data = ((launch or {}).get("action") or {}).get("stored_data") or {}
    exc = data.get("_exception") or {}
    trace = str(exc.get("_stacktrace") or exc.get("_details") or data.get("_message") or "no error recorded")
    return trace.strip()


def queue(lp, name: str) -> dict[str, Any]:
    """The campaign's fireworks (workflows whose metadata name it, as ``almat submit`` writes them) by
    state and category (``spec._category``), and each FIZZLED one's error. Only reads."""
    ids = [i for wf in lp.workflows.find({"metadata.almat_campaign": name}, {"nodes": 1}) for i in wf["nodes"]]
    fws = list(lp.fireworks.find({"fw_id": {"$in": ids}},
                                 {"fw_id": 1, "name": 1, "state": 1, "spec._category": 1, "launches": 1,
                                  "updated_on": 1}))
    counts: Counter = Counter((fw.get("state"), (fw.get("spec") or {}).get("_category") or "none") for fw in fws)
    categories = sorted({c for _, c in counts})
    states = [s for s in QUEUE_STATES if s in ("READY", "RUNNING", "COMPLETED", "FIZZLED")
              or any(st == s for st, _ in counts)]
    table = [{"state": s, **{c: counts.get((s, c), 0) for c in categories}, "total": sum(
        n for (st, _), n in counts.items() if st == s)} for s in states]
    fizzled = [fw for fw in fws if fw.get("state") == "FIZZLED"]
    launch_ids = [fw["launches"][-1] for fw in fizzled if fw.get("launches")]
    launches = {la["launch_id"]: la for la in lp.launches.find({"launch_id": {"$in": launch_ids}},
                                                               {"launch_id": 1, "action": 1})}
    errors = [{"fw_id": fw["fw_id"], "name": fw.get("name"), "category": (fw.get("spec") or {}).get("_category"),
               "error": _fizzle_error(launches.get(fw["launches"][-1]) if fw.get("launches") else None)}
              for fw in sorted(fizzled, key=lambda f: f["fw_id"])]
    return {"n_fireworks": len(fws), "categories": categories, "table": table, "fizzled": errors}
