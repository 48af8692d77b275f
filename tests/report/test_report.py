"""Campaign report: PNG figures + HTML; the plotted values are the stored metrics."""

from html.parser import HTMLParser

import numpy as np
import pytest
from ase.build import bulk

from almat.oracle import CalculatorSpec, label_with_calculator
from almat.report import report_command, write_report
from almat.schemas import (
    CampaignDoc,
    DeviationHistogram,
    IterationDoc,
    ModelDoc,
    NftIterationDoc,
    PoolIterationDoc,
    StructureSource,
    TestErrors,
    to_structure,
)
from almat.uncertainty import calibrate

EMT = CalculatorSpec("ase.calculators.emt", "EMT")
EMT2 = CalculatorSpec("ase.calculators.emt", "EMT", {"asap_cutoff": True})
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEVIATION_BINS = [0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 1e9]  # eV/Å, open last bin


def _cu(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        out.append(to_structure(atoms))
    return out


def _campaign(db, name="rep", model_ids=None):
    db.upsert("campaigns", [CampaignDoc(name=name, config={}, config_fingerprint="x", chemsys="Cu",
                                        elements=["Cu"], oracle=EMT.name, oracle_fingerprint=EMT.fingerprint)])
    rng = np.random.default_rng(0)
    its = []
    for i in range(3):
        counts = rng.integers(0, 40, len(DEVIATION_BINS) - 1).tolist()
        its.append(IterationDoc(
            campaign=name, iteration=i, n_frames_explored=sum(counts), accurate_ratio=0.3 + 0.25 * i,
            candidate_ratio=0.5 - 0.2 * i, failed_ratio=0.2 - 0.05 * i, n_train_labels=8 + 4 * i, n_labelled=4,
            trust_lo=0.05, trust_hi=0.3 + 0.1 * i,
            test_errors=TestErrors(n_structures=4, force_rmse=0.2 / (i + 1), energy_rmse_per_atom=0.01 / (i + 1)),
            deviation_histogram=DeviationHistogram(bin_edges=DEVIATION_BINS, counts=counts),
            model_ids=(model_ids or {}).get(i, [f"missing-{i}-a", f"missing-{i}-b"]),
            # iterations 1 and 2 calibrated on 12 held-out frames (error about 3x the deviation)
            calibration=None if i == 0 else calibrate(
                u := rng.uniform(0.01, 0.2, 12), 3.0 * u * rng.lognormal(0, 0.3, 12), 0.9, iteration=i),
            calibrated_fraction=None if i == 0 else 0.5 + 0.4 * (i - 1),
            stop_rule="calibrated",
        ))
    db.upsert("iterations", its)
    sources = [StructureSource.init, StructureSource.perturbed, StructureSource.md]
    labels = [label_with_calculator(s, EMT, campaign=name, iteration=-1 if k < 4 else k % 3,
                                    source=sources[0] if k < 2 else sources[1] if k < 4 else sources[2])
              for k, s in enumerate(_cu(10, 1))]
    labels += [label_with_calculator(s, EMT2, campaign=name, iteration=0, source=StructureSource.md)
               for s in _cu(2, 2)]
    db.upsert("labels", labels)
    return its, labels


class _Checker(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.images = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag not in ("meta", "br"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}>"
        self.stack.pop()


def test_report_files_and_plotted_values(db, tmp_path):
    its, labels = _campaign(db)
    data = write_report(db, "rep", tmp_path / "out")
    for key in ("learning_curve", "deviation", "labels_by_source", "calibration", "calibration_trend"):
        assert data.files[key].read_bytes()[:8] == PNG_MAGIC and data.files[key].stat().st_size > 10_000
    assert "parity" not in data.files and any("committee not loadable" in n for n in data.notes)

    page = data.files["html"].read_text()
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.stack == [] and len(checker.images) == 5
    assert "<h2>Calibration</h2>" in page
    assert all(src.startswith("data:image/png;base64,") for src in checker.images)
    import base64

    assert base64.b64decode(checker.images[0].split(",", 1)[1]) == data.files["learning_curve"].read_bytes()

    # the plotted values are the stored metrics (read back from the store)
    stored = sorted((IterationDoc.from_store(d) for d in db.iterations.query({"campaign": "rep"})),
                    key=lambda d: d.iteration)
    lc = data.learning_curve
    assert lc["iteration"] == [0, 1, 2]
    assert lc["n_train_labels"] == [it.n_train_labels for it in stored] == [8, 12, 16]
    assert lc["force_rmse"] == [it.test_errors.force_rmse for it in stored]
    assert lc["accurate_ratio"] == [it.accurate_ratio for it in stored]
    cal = data.calibration
    assert cal["iteration"] == [1, 2]
    assert cal["factor"] == [it.calibration.factor for it in stored[1:]]
    assert cal["quantile"] == [it.calibration.quantile for it in stored[1:]]
    assert cal["spearman"] == [it.calibration.spearman for it in stored[1:]]
    assert cal["calibrated_fraction"] == [0.5, 0.9]
    assert all(2.0 < k < 4.5 for k in cal["factor"])  # the factor of 3 put in, recovered
    assert [d["counts"] for d in data.deviation] == [it.deviation_histogram.counts for it in stored]
    assert [(d["trust_lo"], d["trust_hi"]) for d in data.deviation] == [(it.trust_lo, it.trust_hi) for it in stored]
    expected = {}
    for lab in labels:
        key = f"{lab.oracle} [{lab.oracle_fingerprint}]"
        expected.setdefault(key, {}).setdefault(lab.source.value, 0)
        expected[key][lab.source.value] += 1
    assert data.labels_by_source == expected
    assert data.labels_by_source[f"{EMT.name} [{EMT.fingerprint}]"] == {"init": 2, "perturbed": 2, "md": 6}
    assert data.labels_by_source[f"{EMT2.name} [{EMT2.fingerprint}]"] == {"md": 2}


def test_report_command_and_unknown_campaign(db, settings, tmp_path):
    _campaign(db, name="cmd")
    out = report_command("cmd", tmp_path / "r", settings=settings)
    assert out["html"].endswith("report.html") and set(out["figures"]) == {
        "learning_curve", "deviation", "labels_by_source", "calibration", "calibration_trend"}
    with pytest.raises(ValueError, match="no campaign 'nope'; known: cmd"):
        report_command("nope", tmp_path / "r2", settings=settings)


@pytest.mark.slow
def test_parity_uses_the_committee_that_had_not_seen_the_labels(db, tmp_path, tiny_committee):
    from almat.learner.committee import save_model

    committee, results = tiny_committee
    ids = []
    for k, r in enumerate(results):
        doc = ModelDoc(campaign="par", iteration=0, committee_index=k, weights_blob_id=save_model(db.data, r.model),
                       elements=["Cu"])
        db.upsert("models", [doc])
        ids.append(doc.model_id)
    its, labels = _campaign(db, name="par", model_ids={0: ids})
    data = write_report(db, "par", tmp_path / "par")
    assert set(data.parity) == {0}  # iterations 1 and 2 have no loadable committee
    held_out = [lab for lab in labels if lab.iteration == 0 and lab.oracle_fingerprint == EMT.fingerprint]
    p = data.parity[0]
    assert sorted(p["label_ids"]) == sorted(lab.label_id for lab in held_out)
    order = [next(lab for lab in held_out if lab.label_id == i) for i in p["label_ids"]]
    np.testing.assert_array_equal(p["oracle_forces"], np.concatenate([np.ravel(lab.forces) for lab in order]))
    pred = committee.predict([lab.to_atoms() for lab in order])
    np.testing.assert_allclose(p["committee_forces"],
                               np.concatenate([pred.mean_forces(i).ravel() for i in range(len(order))]), atol=1e-6)
    assert p["rmse"] == pytest.approx(np.sqrt(np.mean((p["committee_forces"] - p["oracle_forces"]) ** 2)))
    assert data.files["parity"].read_bytes()[:8] == PNG_MAGIC


def test_pool_and_nft_campaigns_get_their_own_report(db, tmp_path):
    rng = np.random.default_rng(3)
    db.upsert("campaigns", [
        CampaignDoc(name="p", config={"kind": "pool", "target_force_rmse": 0.05}, config_fingerprint="p",
                    status="max_iterations"),
        CampaignDoc(name="n", config={"kind": "nft", "convergence": {"stop_delta": 0.03}}, config_fingerprint="n",
                    status="converged"),
    ])
    db.upsert("pool_iterations", [
        PoolIterationDoc(campaign="p", iteration=i, acquisition="committee", pool_size=40, n_labels=6 + 4 * i,
                         test_errors=TestErrors(n_structures=8, force_rmse=0.2 / (i + 1)),
                         stop_reason="max_iterations (3)" if i == 2 else None)
        for i in range(3)])
    nft = []
    for i in range(3):
        u = rng.lognormal(-3 - 0.5 * i, 0.5, 100)
        nft.append(NftIterationDoc(campaign="n", iteration=i, target_hash="t", n_target_atoms=100,
                                   atomic_uncertainties=u.tolist(), max_uncertainty=float(u.max()),
                                   mean_uncertainty=float(u.mean()), coefficient=1.0, percentile=95,
                                   threshold=float(np.percentile(u, 95)), cutoff=4.5, mode="cluster",
                                   target_force_rmse=0.1 / (i + 1), target_max_force_error=0.3 / (i + 1),
                                   stop="stop_delta" if i == 2 else None,
                                   stop_reason="max atomic uncertainty below stop_delta" if i == 2 else None))
    db.upsert("nft_iterations", nft)

    pool = write_report(db, "p", tmp_path / "p")
    assert pool.files["learning_curve"].read_bytes()[:8] == PNG_MAGIC
    page = pool.files["html"].read_text()
    checker = _Checker()
    checker.feed(page)
    assert checker.stack == [] and len(checker.images) == 1
    assert "<td>committee</td>" in page and "<td>0.1</td>" in page and "max_iterations (3)" in page

    nft_report = write_report(db, "n", tmp_path / "n")
    assert nft_report.files["nft_progress"].read_bytes()[:8] == PNG_MAGIC
    page = nft_report.files["html"].read_text()
    assert f"<td>{nft[1].max_uncertainty:.4g}</td>" in page and "below stop_delta" in page
    assert "learning_curve" not in nft_report.files  # the MD figures are not drawn for an NFT campaign


def test_every_kind_names_figures_and_columns_the_report_and_the_pages_know():
    from almat.campaign.kinds import KINDS
    from almat.report.html import FIGURES
    from almat.serve.app import HERE
    from almat.serve.data import CHARTS

    for kind in KINDS.values():
        assert kind.figures and set(kind.figures) <= set(FIGURES), kind.name
        # every figure the pages draw has its values and its template, and the other way round
        drawn = {f for f in kind.figures if (HERE / "templates" / f"_figure_{f}.html").exists()}
        assert drawn and drawn <= set(CHARTS), kind.name
        assert kind.page_row is not None and kind.page_columns and kind.columns and kind.legend
        for _, path in kind.report_columns:
            assert path.split(".")[0] in kind.record_class.model_fields, (kind.name, path)


def test_given_parity_values_are_drawn_without_loading_a_committee(db, tmp_path, monkeypatch):
    """``almat serve`` hands the report the parity values it keeps: nothing is loaded."""
    from almat.report import plots

    its, labels = _campaign(db, name="given")
    monkeypatch.setattr(plots, "committee_class", lambda: pytest.fail("a committee was loaded"))
    ref = np.linspace(-1.0, 1.0, 24)
    entry = {"label_ids": ["a", "b"], "model_ids": its[2].model_ids, "oracle_forces": ref,
             "committee_forces": ref + 0.01, "rmse": 0.01}
    data = write_report(db, "given", tmp_path / "given", parity=({2: entry}, ["parity: the last committee only"]))
    assert data.parity == {2: entry} and data.files["parity"].read_bytes()[:8] == PNG_MAGIC
    assert "parity: the last committee only" in data.notes
    assert not any("not loadable" in n for n in data.notes)
    assert '<figure id="parity">' in data.files["html"].read_text()


def test_error_axes_start_at_zero():
    from almat.report.plots import error_limits, plot_learning_curve

    assert error_limits([0.0021]) == (0.0, pytest.approx(0.0021 * 1.25))
    assert error_limits([0.002, None, float("nan"), float("inf")]) == (0.0, pytest.approx(0.0025))
    assert error_limits([None]) == (0.0, 1.0) and error_limits([0.0, 0.0]) == (0.0, 1.0) and error_limits([]) == (0, 1)


def test_learning_curve_of_small_errors_starts_at_zero(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from almat.report.plots import plot_learning_curve

    saved = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig",
                        lambda fig, *a, **k: saved.append(fig.axes[0].get_ylim()) or real(fig, *a, **k))
    for rmse in ([0.0021], [0.0021, 0.002], [None]):
        data = {"iteration": list(range(len(rmse))), "n_train_labels": [8 * (i + 1) for i in range(len(rmse))],
                "force_rmse": rmse, "accurate_ratio": [0.9] * len(rmse)}
        plot_learning_curve(data, tmp_path / "lc.png")
        lo, hi = saved[-1]
        assert lo == 0.0 and hi >= max(v or 0 for v in rmse), (rmse, saved[-1])
