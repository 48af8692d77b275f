"""``write_report``: PNG figures and one self-contained HTML page (figures embedded as base64).

Each campaign kind (``almat.campaign.kinds``) names its report figures (``FIGURES``) and the columns of its
iteration table."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from almat.campaign.kinds import CampaignKind, kind_of
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


@dataclass
class _Report:
    """What the figures of one report draw from, and what they fill in."""

    db: CampaignDB
    campaign: str
    doc: dict
    records: list
    out: Path
    data: ReportData
    max_parity_labels: int = 200
    parity: tuple[dict[int, dict], list[str]] | None = None  # given: these values and notes, no committee loaded

    @property
    def config(self) -> dict:
        return self.doc.get("config") or {}

    def path(self, name: str) -> Path:
        return self.out / FIGURES[name].file


def _learning_curve(r: _Report) -> None:
    r.data.learning_curve = learning_curve_data(r.records)
    r.data.files["learning_curve"] = plot_learning_curve(r.data.learning_curve, r.path("learning_curve"),
                                                         title=f"{r.campaign}: learning curve")


def _deviation(r: _Report) -> None:
    r.data.deviation = deviation_data(r.records)
    r.data.files["deviation"] = plot_deviation_histograms(r.data.deviation, r.path("deviation"),
                                                          title=f"{r.campaign}: model deviation")


def _parity(r: _Report) -> None:
    r.data.parity, notes = r.parity if r.parity is not None else parity_data(
        r.db, r.campaign, r.records, oracle_fingerprint=r.doc.get("oracle_fingerprint") or None,
        max_labels=r.max_parity_labels)
    r.data.notes.extend(notes)
    if r.data.parity:
        r.data.files["parity"] = plot_parity(r.data.parity, r.path("parity"),
                                             title=f"{r.campaign}: forces on held-out labels")
    else:
        r.data.notes.append("no parity plot: no iteration has both a committee and labels it had not seen")


def _labels_by_source(r: _Report) -> None:
    r.data.labels_by_source = labels_by_source_data(r.db, r.campaign)
    r.data.files["labels_by_source"] = plot_labels_by_source(r.data.labels_by_source, r.path("labels_by_source"),
                                                             title=f"{r.campaign}: labels per source")


def _calibration(r: _Report) -> None:
    r.data.calibration = calibration_data(r.records)
    if not r.data.calibration["iteration"]:
        r.data.notes.append("no calibration plots: no iteration labelled held-out frames (calibration_samples: 0)")
        return
    last = [it for it in r.records if it.calibration is not None][-1]
    r.data.files["calibration"] = plot_calibration(last.calibration, r.path("calibration"),
                                                   title=f"{r.campaign}, iteration {last.iteration}: calibration")


def _calibration_trend(r: _Report) -> None:
    r.data.calibration = r.data.calibration or calibration_data(r.records)
    if r.data.calibration["iteration"]:
        r.data.files["calibration_trend"] = plot_calibration_trend(
            r.data.calibration, r.path("calibration_trend"),
            conv_accuracy=(r.config.get("convergence") or {}).get("conv_accuracy"),
            title=f"{r.campaign}: calibration per iteration")


def _pool_learning_curve(r: _Report) -> None:
    if r.records:
        r.data.files["learning_curve"] = plot_learning_curves(r.records, r.path("pool_learning_curve"),
                                                              target=r.config.get("target_force_rmse"),
                                                              title=f"{r.campaign}: learning curve")


def _nft_progress(r: _Report) -> None:
    if r.records:
        r.data.files["nft_progress"] = plot_nft_progress(
            r.records, r.path("nft_progress"), stop_delta=(r.config.get("convergence") or {}).get("stop_delta"))


@dataclass(frozen=True)
class Figure:
    """One report figure: its file, its caption, how it is drawn (``draw`` fills in the report's values and
    ``files[key]``, or a note), and its key in ``ReportData.files``."""

    file: str
    caption: str
    draw: Callable[[_Report], None]
    key: str


#: the report figures, by the names the campaign kinds give them (``almat.campaign.kinds``)
FIGURES: dict[str, Figure] = {
    "learning_curve": Figure("learning_curve.png", "Learning curve: held-out force RMSE of the committee (committee "
                             "of iteration i on the labels selected in iteration i, which it had not seen) and the "
                             "fraction of explored frames below trust_lo, against the number of training labels.",
                             _learning_curve, "learning_curve"),
    "deviation": Figure("deviation_histograms.png", "Max atomic force deviation of the committee over the explored "
                        "frames, per iteration, with the trust levels. Frames below trust_lo count as accurate, "
                        "between trust_lo and trust_hi as candidates, above trust_hi as failed. The first and the "
                        "last (open) bins are drawn with finite widths on the log axis.", _deviation, "deviation"),
    "parity": Figure("parity.png", "Committee-mean against oracle force components on held-out labels.", _parity,
                     "parity"),
    "labels_by_source": Figure("labels_by_source.png", "Ok labels per structure source and oracle.", _labels_by_source,
                               "labels_by_source"),
    "calibration": Figure("calibration.png", "Calibration of the last calibrated iteration: true max atomic force "
                          "error against the calibrated committee deviation k·σ on held-out explored frames "
                          "(labelled by the oracle, never trained on), with the split-conformal band q·k·σ and its "
                          "coverage.", _calibration, "calibration"),
    "calibration_trend": Figure("calibration_trend.png", "Per iteration: the recalibration factor k (true error / "
                                "committee deviation) and the conformal multiplier q·k; the Spearman rank correlation "
                                "of deviation and error, and the fraction of explored frames whose calibrated "
                                "uncertainty is below the force tolerance (the calibrated stopping rule).",
                                _calibration_trend, "calibration_trend"),
    "pool_learning_curve": Figure("learning_curve.png", "Learning curve: committee-mean force RMSE on the held-out "
                                  "part of the pool against the number of training labels (oracle calls).",
                                  _pool_learning_curve, "learning_curve"),
    "nft_progress": Figure("nft_progress.png", "Atomic force uncertainty of the target per iteration (box: quartiles, "
                           "whiskers: 5-95 %), the selection threshold and stop_delta; the committee's force errors "
                           "on the target when the oracle evaluated it.", _nft_progress, "nft_progress"),
}


def _value(record: Any, path: str) -> Any:
    """``record``'s attribute ``path`` (dotted: nested); a missing stop reason is blank."""
    value = record
    for name in path.split("."):
        value = getattr(value, name)
    return (value or "") if path == "stop_reason" else value


def _summary(r: _Report, kind: CampaignKind) -> list[list[Any]]:
    doc = r.doc
    reuse = reuse_summary(r.db, r.campaign).get(r.campaign, {"labels": 0, "reused": 0, "oracle_calls": 0})
    return [
        ["kind", kind.name], ["status", doc.get("status")], ["chemical system", doc.get("chemsys")],
        ["oracle", doc.get("oracle")], ["oracle fingerprint", doc.get("oracle_fingerprint") or None],
        ["iterations", len(r.records)], ["ok labels", reuse["labels"]],
        ["labels reused from earlier labels (no oracle call)", reuse["reused"]],
        ["oracle calls paid", reuse["oracle_calls"]], ["stop reason", doc.get("stop_reason")],
    ]


def _calibration_table(cal: dict[str, list]) -> str:
    rows = [[cal["iteration"][i], cal["n_samples"][i], cal["factor"][i], cal["quantile"][i], cal["coverage"][i],
             cal["empirical_coverage"][i], cal["spearman"][i], cal["calibrated_fraction"][i]]
            for i in range(len(cal.get("iteration", [])))]
    if not rows:
        return ""
    return _table(["it", "held-out frames", "k", "q", "target coverage", "coverage on these frames", "Spearman ρ",
                   "frames below tolerance"], rows)


def _body(r: _Report, kind: CampaignKind) -> str:
    """The page: summary, the kind's iteration table, the calibration table (if any), figures and notes."""
    header = [title for title, _ in kind.report_columns]
    rows = [[_value(rec, path) for _, path in kind.report_columns] for rec in r.records]
    cal_table = _calibration_table(r.data.calibration)
    figures = [_figure(FIGURES[name].key, r.data.files[FIGURES[name].key], FIGURES[name].caption)
               for name in kind.figures if FIGURES[name].key in r.data.files]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in r.data.notes)
    return (f"{_table(['', ''], _summary(r, kind))}\n<h2>Iterations</h2>\n{_table(header, rows)}\n"
            + (f"<h2>Calibration</h2>{cal_table}\n" if cal_table else "")
            + f"<h2>Figures</h2>\n{''.join(figures)}\n"
            + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""))


def write_report(db: CampaignDB, campaign: str, out_dir: str | Path, max_parity_labels: int = 200,
                 parity: tuple[dict[int, dict], list[str]] | None = None) -> ReportData:
    """Write the campaign's figures (PNG) and ``report.html`` into ``out_dir``; return the plotted values.

    The figures and the iteration table are the campaign kind's (``almat.campaign.kinds``): MD campaigns get
    the full report, pool-based and NFT campaigns their records and progress figure. ``parity``: the parity
    figure's values and notes, computed already (``almat serve`` keeps them); none: every iteration's
    committee is loaded.
    """
    doc = db.campaigns.query_one({"name": campaign})
    kind = kind_of(doc or {})
    records = load_iterations(db, campaign, kind.name)
    if doc is None and not records:
        names = sorted(d["name"] for d in db.campaigns.query({}, properties=["name"]))
        raise ValueError(f"no campaign {campaign!r}" + (f"; known: {', '.join(names)}" if names else ""))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = _Report(db, campaign, doc or {}, records, out, ReportData(campaign=campaign), max_parity_labels, parity)
    if not records:
        report.data.notes.append(f"no {kind.name} iteration recorded yet")
    for name in kind.figures:
        FIGURES[name].draw(report)
    page_path = out / "report.html"
    page_path.write_text(_page(campaign, _body(report, kind)), encoding="utf-8")
    report.data.files["html"] = page_path
    return report.data


def report_command(campaign: str, out_dir: str | Path, settings=None) -> dict[str, Any]:
    """``almat report CAMPAIGN OUT_DIR``: returns ``{html, figures: {name: path}, notes}``."""
    with CampaignDB.from_settings(settings, check=True) as db:
        data = write_report(db, campaign, out_dir)
    return {
        "html": str(data.files["html"]),
        "figures": {k: str(v) for k, v in data.files.items() if k != "html"},
        "notes": data.notes,
    }
