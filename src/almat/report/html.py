"""``write_report``: PNG figures and one self-contained HTML page (figures embedded as base64)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from almat.query import reuse_summary
from almat.report.learning import plot_learning_curves, plot_nft_progress
from almat.report.plots import (
    ReportData,
    calibration_data,
    deviation_data,
    labels_by_source_data,
    learning_curve_data,
    load_iterations,
    parity_data,
    plot_calibration,
    plot_calibration_trend,
    plot_deviation_histograms,
    plot_labels_by_source,
    plot_learning_curve,
    plot_parity,
)
from almat.stores import CampaignDB

FIGURES = {
    "learning_curve": ("learning_curve.png", "Learning curve: held-out force RMSE of the committee (committee of "
                       "iteration i on the labels selected in iteration i, which it had not seen) and the "
                       "fraction of explored frames below trust_lo, against the number of training labels."),
    "deviation": ("deviation_histograms.png", "Max atomic force deviation of the committee over the explored "
                  "frames, per iteration, with the trust levels. Frames below trust_lo count as accurate, "
                  "between trust_lo and trust_hi as candidates, above trust_hi as failed. The first and the "
                  "last (open) bins are drawn with finite widths on the log axis."),
    "parity": ("parity.png", "Committee-mean against oracle force components on held-out labels."),
    "labels_by_source": ("labels_by_source.png", "Ok labels per structure source and oracle."),
    "calibration": ("calibration.png", "Calibration of the last calibrated iteration: true max atomic force "
                    "error against the calibrated committee deviation k·σ on held-out explored frames (labelled "
                    "by the oracle, never trained on), with the split-conformal band q·k·σ and its coverage."),
    "calibration_trend": ("calibration_trend.png", "Per iteration: the recalibration factor k (true error / "
                          "committee deviation) and the conformal multiplier q·k; the Spearman rank correlation "
                          "of deviation and error, and the fraction of explored frames whose calibrated "
                          "uncertainty is below the force tolerance (the calibrated stopping rule)."),
}


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return format(value, spec)
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(key: str, path: Path, caption: str) -> str:
    name = Path(path).name
    b64 = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure id="{key}"><img src="data:image/png;base64,{b64}" alt="{html.escape(name)}">'
            f'<figcaption>{html.escape(caption)} <a href="{html.escape(name)}">{html.escape(name)}</a>'
            "</figcaption></figure>")


def _page(campaign: str, body: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>almat report: {html.escape(campaign)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }}
th {{ background: #f3f3f3; }}
figure {{ margin: 2rem 0; }} img {{ max-width: 100%; }}
figcaption {{ font-size: 0.9rem; color: #444; }}
</style>
</head>
<body>
<h1>Campaign {html.escape(campaign)}</h1>
{body}
</body>
</html>
"""


def _write_records_report(db: CampaignDB, doc: dict, kind: str, out: Path) -> ReportData:
    """Pool-based and NFT campaigns: their per-iteration records and their progress figure."""
    campaign = doc["name"]
    data = ReportData(campaign=campaign)
    config = doc.get("config") or {}
    records = load_iterations(db, campaign, kind)
    if kind == "pool":
        header = ["it", "acquisition", "labels", "new", "unlabelled", "test F RMSE (eV/Å)",
                  "test E RMSE (eV/atom)", "stop"]
        rows = [[r.iteration, r.acquisition, r.n_labels, r.n_new_labels, r.n_unlabelled, r.test_errors.force_rmse,
                 r.test_errors.energy_rmse_per_atom, r.stop_reason or ""] for r in records]
        key, caption = "learning_curve", ("Learning curve: committee-mean force RMSE on the held-out part of the "
                                          "pool against the number of training labels (oracle calls).")
        if records:
            data.files[key] = plot_learning_curves(records, out / "learning_curve.png",
                                                   target=config.get("target_force_rmse"),
                                                   title=f"{campaign}: learning curve")
    else:
        header = ["it", "train labels", "max σ_atom (eV/Å)", "mean σ_atom (eV/Å)", "threshold (eV/Å)", "chunks",
                  "target F RMSE (eV/Å)", "stop"]
        rows = [[r.iteration, r.n_train_labels, r.max_uncertainty, r.mean_uncertainty, r.threshold, r.n_chunks,
                 r.target_force_rmse, r.stop_reason or ""] for r in records]
        key, caption = "nft_progress", ("Atomic force uncertainty of the target per iteration (box: quartiles, "
                                        "whiskers: 5-95 %), the selection threshold and stop_delta; the "
                                        "committee's force errors on the target when the oracle evaluated it.")
        if records:
            data.files[key] = plot_nft_progress(records, out / "nft_progress.png",
                                                stop_delta=(config.get("convergence") or {}).get("stop_delta"))
    if not records:
        data.notes.append(f"no {kind} iteration recorded yet")
    summary = [["kind", kind], ["status", doc.get("status")], ["chemical system", doc.get("chemsys")],
               ["oracle", doc.get("oracle")], ["iterations", len(records)], ["stop reason", doc.get("stop_reason")]]
    figures = _figure(key, data.files[key], caption) if key in data.files else ""
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in data.notes)
    body = (f"{_table(['', ''], summary)}<h2>Iterations</h2>{_table(header, rows)}<h2>Figures</h2>{figures}"
            + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""))
    page_path = out / "report.html"
    page_path.write_text(_page(campaign, body), encoding="utf-8")
    data.files["html"] = page_path
    return data


def write_report(db: CampaignDB, campaign: str, out_dir: str | Path, max_parity_labels: int = 200) -> ReportData:
    """Write the campaign's figures (PNG) and ``report.html`` into ``out_dir``; return the plotted values.

    MD campaigns get the full report; pool-based and NFT campaigns their records and progress figure.
    """
    doc = db.campaigns.query_one({"name": campaign})
    out = Path(out_dir)
    kind = ((doc or {}).get("config") or {}).get("kind", "md")
    if kind in ("pool", "nft"):
        out.mkdir(parents=True, exist_ok=True)
        return _write_records_report(db, doc, kind, out)
    iterations = load_iterations(db, campaign)
    if doc is None and not iterations:
        names = sorted(d["name"] for d in db.campaigns.query({}, properties=["name"]))
        raise ValueError(f"no campaign {campaign!r}" + (f"; known: {', '.join(names)}" if names else ""))
    out.mkdir(parents=True, exist_ok=True)
    data = ReportData(campaign=campaign)

    data.learning_curve = learning_curve_data(iterations)
    data.files["learning_curve"] = plot_learning_curve(data.learning_curve, out / FIGURES["learning_curve"][0],
                                                       title=f"{campaign}: learning curve")
    data.deviation = deviation_data(iterations)
    data.files["deviation"] = plot_deviation_histograms(data.deviation, out / FIGURES["deviation"][0],
                                                        title=f"{campaign}: model deviation")
    fingerprint = (doc or {}).get("oracle_fingerprint") or None
    data.parity, notes = parity_data(db, campaign, iterations, oracle_fingerprint=fingerprint,
                                     max_labels=max_parity_labels)
    data.notes.extend(notes)
    if data.parity:
        data.files["parity"] = plot_parity(data.parity, out / FIGURES["parity"][0],
                                           title=f"{campaign}: forces on held-out labels")
    else:
        data.notes.append("no parity plot: no iteration has both a committee and labels it had not seen")
    data.labels_by_source = labels_by_source_data(db, campaign)
    data.files["labels_by_source"] = plot_labels_by_source(data.labels_by_source, out / FIGURES["labels_by_source"][0],
                                                           title=f"{campaign}: labels per source")

    data.calibration = calibration_data(iterations)
    if data.calibration["iteration"]:
        last = [it for it in iterations if it.calibration is not None][-1]
        data.files["calibration"] = plot_calibration(last.calibration, out / FIGURES["calibration"][0],
                                                     title=f"{campaign}, iteration {last.iteration}: calibration")
        conv = ((doc or {}).get("config") or {}).get("convergence") or {}
        data.files["calibration_trend"] = plot_calibration_trend(
            data.calibration, out / FIGURES["calibration_trend"][0], conv_accuracy=conv.get("conv_accuracy"),
            title=f"{campaign}: calibration per iteration")
    else:
        data.notes.append("no calibration plots: no iteration labelled held-out frames (calibration_samples: 0)")

    reuse = reuse_summary(db, campaign).get(campaign, {"labels": 0, "reused": 0, "oracle_calls": 0})
    summary = [
        ["status", (doc or {}).get("status")], ["chemical system", (doc or {}).get("chemsys")],
        ["oracle", (doc or {}).get("oracle")], ["oracle fingerprint", fingerprint],
        ["iterations", len(iterations)], ["ok labels", reuse["labels"]],
        ["labels reused from earlier labels (no oracle call)", reuse["reused"]],
        ["oracle calls paid", reuse["oracle_calls"]], ["stop reason", (doc or {}).get("stop_reason")],
    ]
    it_rows = [[it.iteration, it.n_train_labels, it.n_frames_explored, it.accurate_ratio, it.candidate_ratio,
                it.failed_ratio, it.n_labelled, it.test_errors.n_structures, it.test_errors.force_rmse,
                it.test_errors.energy_rmse_per_atom, it.trust_lo, it.trust_hi, it.stop_reason or ""]
               for it in iterations]
    cal = data.calibration
    cal_rows = [[cal["iteration"][i], cal["n_samples"][i], cal["factor"][i], cal["quantile"][i],
                 cal["coverage"][i], cal["empirical_coverage"][i], cal["spearman"][i], cal["calibrated_fraction"][i]]
                for i in range(len(cal.get("iteration", [])))]
    cal_table = (_table(["it", "held-out frames", "k", "q", "target coverage", "coverage on these frames",
                         "Spearman ρ", "frames below tolerance"], cal_rows)) if cal_rows else ""
    figures = [_figure(key, data.files[key], caption) for key, (_, caption) in FIGURES.items() if key in data.files]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in data.notes)
    it_header = ["it", "train labels", "frames explored", "accurate", "candidate", "failed", "new labels",
                 "held-out labels", "F RMSE (eV/Å)", "E RMSE (eV/atom)", "trust_lo (eV/Å)", "trust_hi (eV/Å)", "stop"]
    body = (f"{_table(['', ''], summary)}\n<h2>Iterations</h2>\n{_table(it_header, it_rows)}\n"
            + (f"<h2>Calibration</h2>{cal_table}\n" if cal_table else "")
            + f"<h2>Figures</h2>\n{''.join(figures)}\n"
            + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""))
    page = _page(campaign, body)
    page_path = out / "report.html"
    page_path.write_text(page, encoding="utf-8")
    data.files["html"] = page_path
    return data


def report_command(campaign: str, out_dir: str | Path, settings=None) -> dict[str, Any]:
    """``almat report CAMPAIGN OUT_DIR``: returns ``{html, figures: {name: path}, notes}``."""
    with CampaignDB.from_settings(settings, check=True) as db:
        data = write_report(db, campaign, out_dir)
    return {
        "html": str(data.files["html"]),
        "figures": {k: str(v) for k, v in data.files.items() if k != "html"},
        "notes": data.notes,
    }
