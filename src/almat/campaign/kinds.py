"""One registry of campaign kinds: everything that differs between ``md``, ``pool`` and ``nft`` outside
their explorer's code.

Each :class:`CampaignKind` names its settings class and its explorer (``"module:Class"`` strings, imported
on use, so that reading the registry imports no torch), the collection and document class of its
per-iteration records, and how they are shown: the columns of its status table with their short titles
and a legend (``almat status``), the table of its campaign page (``almat serve``), the iteration table of
its report, and its figures (``almat.report`` and ``almat.serve`` draw each figure by its name; the rows
come from ``almat.campaign.views``). ``almat.cli``, ``almat.serve``, ``almat.report``, the runner and the
flow read it; a new kind is a new explorer module and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from almat.campaign import views
from almat.schemas import AlmatDocument, IterationDoc, NftIterationDoc, PoolIterationDoc
from almat.schemas.section import import_string


@dataclass(frozen=True)
class CampaignKind:
    """What one campaign kind is, as data."""

    name: str
    config: str  # "module:Class" of its settings (a pydantic model with ``kind: Literal[name]``)
    explorer: str  # "module:Class" of its ``Explorer``
    records: str  # the ``CampaignDB`` collection of its per-iteration records
    record_class: type[AlmatDocument]
    columns: tuple[tuple[str, str], ...]  # (row key, title) of the status table
    legend: str  # what the short titles mean (narrow terminals, almat serve)
    short: dict[str, str] = field(default_factory=dict)  # row key (status or page) -> short title
    figures: tuple[str, ...] = ()  # its figures, by name (``almat.report.html.FIGURES``, ``almat.serve.data.CHARTS``)
    row: Callable[[dict], dict] | None = None  # a stored record -> its status row (default: the columns' keys)
    page_row: Callable[[Any], dict] | None = None  # a record document -> its row on the campaign page
    page_columns: tuple[tuple[str, str, str], ...] = ()  # (title, page row key, style) of the campaign page
    report_columns: tuple[tuple[str, str], ...] = ()  # (title, record attribute: dotted if nested) of the report
    page_legend: str = ""  # what the page's other short titles mean (after ``legend``)
    optional: tuple[str, ...] = ()  # status columns left out when no row has a value (settings not every campaign has)

    def status_row(self, record: dict) -> dict:
        """A stored per-iteration record as a row of the status table."""
        return self.row(record) if self.row is not None else {key: record.get(key) for key, _ in self.columns}

    def config_class(self) -> type:
        return import_string(self.config)

    def explorer_class(self) -> type:
        return import_string(self.explorer)


KINDS: dict[str, CampaignKind] = {
    "md": CampaignKind(
        name="md", config="almat.campaign.settings.md:CampaignConfig", explorer="almat.campaign.md:MdExplorer",
        records="iterations", record_class=IterationDoc,
        columns=(("iteration", "it"), ("stage", "stage"), ("trust_lo", "lo (eV/Å)"), ("frames_explored", "frames"),
                 ("accurate_pct", "accurate %"), ("candidate_pct", "candidate %"), ("failed_pct", "failed %"),
                 ("train_labels", "train labels"), ("new_labels", "new labels"),
                 ("test_force_rmse", "test F RMSE (eV/Å)"), ("calibration_factor", "k"),
                 ("below_tolerance_pct", "below tol %"), ("below_tolerance_bound_pct", "bound %"),
                 ("stop_reason", "")),
        short={"trust_lo": "lo", "frames_explored": "frames", "accurate_pct": "acc%", "candidate_pct": "cand%",
               "failed_pct": "fail%", "train_labels": "train", "new_labels": "new", "test_force_rmse": "F RMSE",
               "calibration_factor": "k", "below_tolerance_pct": "<tol%", "below_tolerance_bound_pct": "lcb%",
               "accurate": "acc%", "candidate": "cand%",
               "failed": "fail%", "force_rmse": "F RMSE", "energy_rmse": "E RMSE", "trust_hi": "hi",
               "below_tol": "<tol%", "below_tol_bound": "lcb%"},
        legend="stage: exploration stage; lo: the lower trust level (eV/Å; chosen each iteration with adaptive_lo); "
               "acc/cand/fail%: explored frames below trust_lo / between the trust levels / above trust_hi; train: "
               "training labels; new: labels added; F RMSE: held-out force RMSE (eV/Å); k: calibration factor; "
               "<tol%: frames whose k·σ is below the force tolerance; lcb%: its lower confidence bound "
               "(convergence.conv_confidence, on the explored and calibration frames: docs/uncertainty.md)",
        figures=("learning_curve", "deviation", "parity", "labels_by_source", "calibration", "calibration_trend"),
        row=views.md_status_row, page_row=views.md_page_row,
        page_columns=(("it", "iteration", ""), ("train labels", "train_labels", ""), ("frames", "frames", ""),
                      ("accurate %", "accurate", "pct"), ("candidate %", "candidate", "pct"),
                      ("failed %", "failed", "pct"), ("new labels", "new_labels", ""),
                      ("failed labels", "failed_labels", ""), ("held-out", "held_out", ""),
                      ("F RMSE (eV/Å)", "force_rmse", "fmt"), ("E RMSE (eV/atom)", "energy_rmse", "fmt"),
                      ("trust_lo", "trust_lo", "fmt"), ("trust_hi", "trust_hi", "fmt"), ("k", "k", "fmt"),
                      ("below tol %", "below_tol", "pct"), ("bound %", "below_tol_bound", "pct"),
                      ("stop", "stop_reason", "text")),
        report_columns=(("it", "iteration"), ("train labels", "n_train_labels"),
                        ("frames explored", "n_frames_explored"),
                        ("accurate", "accurate_ratio"), ("candidate", "candidate_ratio"), ("failed", "failed_ratio"),
                        ("new labels", "n_labelled"), ("held-out labels", "test_errors.n_structures"),
                        ("F RMSE (eV/Å)", "test_errors.force_rmse"),
                        ("E RMSE (eV/atom)", "test_errors.energy_rmse_per_atom"), ("trust_lo (eV/Å)", "trust_lo"),
                        ("trust_hi (eV/Å)", "trust_hi"), ("stop", "stop_reason")),
        page_legend="hi: the upper trust level (eV/Å); held-out: labels the committee is tested on; E RMSE: held-out "
                    "energy RMSE (eV/atom)",
        optional=("below_tolerance_bound_pct",)),
    "pool": CampaignKind(
        name="pool", config="almat.campaign.settings.pool:PoolCampaignConfig", explorer="almat.campaign.pool:PoolExplorer",
        records="pool_iterations", record_class=PoolIterationDoc,
        columns=(("iteration", "it"), ("acquisition", "acquisition"), ("n_labels", "labels"), ("n_new_labels", "new"),
                 ("n_unlabelled", "unlabelled"), ("test_force_rmse", "test F RMSE (eV/Å)"), ("stop_reason", "")),
        short={"acquisition": "acq", "n_labels": "labels", "n_new_labels": "new", "n_unlabelled": "unlab",
               "test_force_rmse": "F RMSE", "train_labels": "train", "unlabelled": "unlab", "force_rmse": "F RMSE",
               "energy_rmse": "E RMSE"},
        legend="acq: acquisition; labels: oracle calls so far; new: labelled in the iteration; unlab: unlabelled "
               "pool; F RMSE: held-out force RMSE (eV/Å)",
        figures=("pool_learning_curve",), page_row=views.pool_page_row,
        page_columns=(("it", "iteration", ""), ("acquisition", "acquisition", "text"), ("labels", "labels", ""),
                      ("train labels", "train_labels", ""), ("new", "new", ""), ("failed", "failed", ""),
                      ("unlabelled", "unlabelled", ""), ("held-out", "held_out", ""),
                      ("F RMSE (eV/Å)", "force_rmse", "fmt"), ("E RMSE (eV/atom)", "energy_rmse", "fmt"),
                      ("wall (s)", "wall_time", "fmt3"), ("stop", "stop_reason", "text")),
        report_columns=(("it", "iteration"), ("acquisition", "acquisition"), ("labels", "n_labels"),
                        ("new", "n_new_labels"), ("unlabelled", "n_unlabelled"),
                        ("test F RMSE (eV/Å)", "test_errors.force_rmse"),
                        ("test E RMSE (eV/atom)", "test_errors.energy_rmse_per_atom"), ("stop", "stop_reason")),
        page_legend="train: training labels; held-out: labels the committee is tested on; E RMSE: held-out energy "
                    "RMSE (eV/atom)"),
    "nft": CampaignKind(
        name="nft", config="almat.campaign.settings.nft:NftCampaignConfig", explorer="almat.campaign.nft:NftExplorer",
        records="nft_iterations", record_class=NftIterationDoc,
        columns=(("iteration", "it"), ("n_train_labels", "train labels"), ("max_uncertainty", "max σ_atom (eV/Å)"),
                 ("threshold", "threshold (eV/Å)"), ("n_chunks", "chunks"),
                 ("target_force_rmse", "target F RMSE (eV/Å)"), ("stop_reason", "")),
        short={"n_train_labels": "train", "max_uncertainty": "σ max", "threshold": "thr", "n_chunks": "chunks",
               "target_force_rmse": "F RMSE", "train_labels": "train", "max_unc": "σ max", "mean_unc": "σ mean"},
        legend="train: training labels; σ max: largest atomic force uncertainty of the target (eV/Å); thr: selection "
               "threshold (eV/Å); F RMSE: committee against the oracle on the target (eV/Å)",
        figures=("nft_progress",), row=views.nft_status_row, page_row=views.nft_page_row,
        page_columns=(("it", "iteration", ""), ("train labels", "train_labels", ""),
                      ("target atoms", "target_atoms", ""), ("max σ_atom (eV/Å)", "max_unc", "fmt"),
                      ("mean σ_atom", "mean_unc", "fmt"), ("threshold", "threshold", "fmt"),
                      ("uncertain atoms", "uncertain", ""), ("chunks", "chunks", ""), ("new labels", "new_labels", ""),
                      ("failed", "failed_labels", ""), ("target F RMSE", "target_force_rmse", "fmt"),
                      ("target max error", "target_max_error", "fmt"), ("stop", "stop_reason", "text")),
        report_columns=(("it", "iteration"), ("train labels", "n_train_labels"),
                        ("max σ_atom (eV/Å)", "max_uncertainty"), ("mean σ_atom (eV/Å)", "mean_uncertainty"),
                        ("threshold (eV/Å)", "threshold"), ("chunks", "n_chunks"),
                        ("target F RMSE (eV/Å)", "target_force_rmse"), ("stop", "stop_reason")),
        page_legend="σ mean: mean atomic force uncertainty of the target (eV/Å)"),
}


def kind_of(config_or_doc: Any) -> CampaignKind:
    """The kind of a campaign config, or of a stored campaign document (its ``config.kind``; default md)."""
    if isinstance(config_or_doc, dict):
        name = (config_or_doc.get("config") or {}).get("kind", "md")
    else:
        name = getattr(config_or_doc, "kind", "md")
    if name not in KINDS:
        raise ValueError(f"unknown campaign kind {name!r}; valid: {', '.join(KINDS)}")
    return KINDS[name]
