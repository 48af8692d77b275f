"""``almat serve`` in a real browser (Debian chromium + Selenium) over the store of a real EMT campaign.

The campaign runs once for the module (2 iterations, 2 small MACE models, about a minute on 2 cores).
Screenshots: tests/serve/artifacts/campaign_list.png, campaign_page.png.
"""

from __future__ import annotations

import io
import urllib.error
import urllib.request

import pytest

from almat.schemas import CampaignDoc, IterationDoc, LabelDoc, to_structure
from almat.stores import CampaignDB

from serve_helpers import load_bench, screenshot

pytestmark = pytest.mark.slow

CONFIG = {
    "name": "cu-serve",
    "structures": [{"bulk": {"name": "Cu", "crystalstructure": "fcc", "a": 3.61}, "supercell": [2, 2, 2]}],
    "initial": {"n_per_structure": 8, "rattle_std": 0.05, "max_strain": 0.02},
    "learner": {"n_models": 2, "hyperparameters": {"num_channels": 8, "epochs": 8, "warm_start_epochs": 4,
                                                  "batch_size": 3}},
    "sampler": {"temperatures": [600], "steps": 60, "sample_every": 6, "trust_lo": 0.05, "trust_hi": 5.0},
    "selection": {"policy": "diverse", "max_select": 4},
    "convergence": {"rule": "calibrated", "force_tolerance": 0.05, "calibration_samples": 4,
                    "conv_accuracy": 1.0, "max_iterations": 2},
}
XSS = "<script>window.__xss=1</script>"
INJECT = '{"$ne": 1}'


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real campaign's store, plus a failed label and a campaign with a hostile name, served on a free port."""
    from ase.build import bulk

    from almat.campaign import load_config, run_campaign
    from almat.settings import AlmatSettings

    tmp = tmp_path_factory.mktemp("serve")
    settings = AlmatSettings(db_path=tmp / "db", run_dir=tmp / "runs")
    result = run_campaign(load_config(CONFIG), settings)
    with CampaignDB.from_settings(settings) as db:
        db.upsert("labels", [LabelDoc(structure=to_structure(bulk("Cu", cubic=True)), campaign="cu-serve", iteration=1,
                                      source="md", oracle=result.campaign.oracle,
                                      oracle_fingerprint=result.campaign.oracle_fingerprint, status="failed",
                                      reason="EMT refused: atoms too close")])
        db.upsert("campaigns", [CampaignDoc(name=XSS, config={"kind": "md"}, config_fingerprint="x", chemsys="Zr",
                                            status="failed")])
    base, server = load_bench().start_server(settings, refresh_s=0.5)
    yield base, settings, result
    server.should_exit = True


def _texts(driver, css):
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, css)]


def _fmt(v):
    return "–" if v is None else "∞" if v == float("inf") else format(v, ".4g")


def test_campaign_list_shows_the_stored_campaigns_and_filters(browser, served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, settings, result = served
    browser.get(base + "/")
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-campaign="cu-serve"]')
    cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
    c = result.campaign
    assert cells[:5] == ["cu-serve", "md", "Cu", c.oracle, c.status.value]
    assert cells[5] == "2 iteration(s)" and cells[6] == str(c.n_labels)
    assert str(settings.db_path.resolve()) in browser.find_element(By.CSS_SELECTOR, "header .where").text
    # the hostile name is shown as text, never run
    assert XSS in _texts(browser, "#campaigns td a")
    assert browser.execute_script("return window.__xss") is None
    screenshot(browser, "campaign_list")
    Select(browser.find_element(By.ID, "filter-chemsys")).select_by_value("Cu")
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    WebDriverWait(browser, 20).until(lambda d: "chemsys=Cu" in d.current_url)
    assert _texts(browser, "#campaigns td a") == ["cu-serve"]
    Select(browser.find_element(By.ID, "filter-chemsys")).select_by_value("")
    Select(browser.find_element(By.ID, "filter-status")).select_by_value("failed")
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    WebDriverWait(browser, 20).until(lambda d: "status=failed" in d.current_url)
    assert _texts(browser, "#campaigns td a") == [XSS]


def test_campaign_page_shows_the_stored_numbers(browser, served):
    from selenium.webdriver.common.by import By

    base, settings, result = served
    browser.get(base + "/campaigns/cu-serve")
    with CampaignDB.from_settings(settings) as db:
        its = sorted((IterationDoc.from_store(d) for d in db.iterations.query({"campaign": "cu-serve"})),
                     key=lambda d: d.iteration)
        n_models = db.models.count({"campaign": "cu-serve"})
        by_source = {}
        for d in db.labels.query({"campaign": "cu-serve"}, properties=["source", "status"]):
            by_source.setdefault(d["source"], [0, 0])[d["status"] == "failed"] += 1
    assert len(its) == 2
    for it in its:
        cells = _texts(browser, f'#iteration-table tr[data-iteration="{it.iteration}"] td')
        assert cells[1:3] == [str(it.n_train_labels), str(it.n_frames_explored)]
        assert cells[3] == f"{100 * it.accurate_ratio:.1f}" and cells[6] == str(it.n_labelled)
        assert cells[9] == _fmt(it.test_errors.force_rmse) and cells[13] == _fmt(it.calibration.factor)
        cal = _texts(browser, f'#calibration-table tr[data-iteration="{it.iteration}"] td')
        assert cal[1:4] == [str(it.calibration.n_samples), _fmt(it.calibration.factor), _fmt(it.calibration.quantile)]
        assert cal[6] == _fmt(it.calibration.spearman)
        # the histogram drawn in the browser holds the stored counts
        bars = browser.find_elements(By.CSS_SELECTOR, f'#chart-deviation figure[data-iteration="{it.iteration}"] '
                                                      "rect.bar")
        assert sum(int(b.get_attribute("data-count")) for b in bars) == sum(it.deviation_histogram.counts)
    points = browser.find_elements(By.CSS_SELECTOR, "#chart-learning circle.pt")
    drawn = sorted(float(p.get_attribute("data-y")) for p in points if float(p.get_attribute("data-y")) > 0.0)
    stored = sorted([it.test_errors.force_rmse for it in its] + [it.accurate_ratio for it in its if it.accurate_ratio])
    assert drawn == pytest.approx(stored)
    last = its[-1].calibration
    assert len(browser.find_elements(By.CSS_SELECTOR, "#chart-calibration circle.pt")) == last.n_samples
    rows = {tuple(r.split(" ")[:1]): r for r in _texts(browser, "#labels-by-source tbody tr")}
    assert len(rows) == len(by_source)
    for source, (ok, failed) in by_source.items():
        assert any(r.startswith(source) and r.endswith(f"{ok} {failed}") for r in rows.values())
    assert "EMT refused: atoms too close" in _texts(browser, "#failed-labels td")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#model-table tbody tr")) == n_models
    screenshot(browser, "campaign_page")


def test_downloads_are_the_export_and_the_report(served, monkeypatch):
    from ase.io import read

    from almat.learner.committee import Committee

    base, settings, result = served
    loads = []
    real = Committee.from_store.__func__
    monkeypatch.setattr(Committee, "from_store", classmethod(lambda cls, db, ids, **kw: loads.append(list(ids))
                                                             or real(cls, db, ids, **kw)))
    with urllib.request.urlopen(base + "/campaigns/cu-serve/labels.extxyz", timeout=60) as r:
        assert "attachment" in r.headers["Content-Disposition"]
        frames = read(io.StringIO(r.read().decode()), index=":", format="extxyz")
    with CampaignDB.from_settings(settings) as db:
        ok = {d["label_id"]: d for d in db.labels.query({"campaign": "cu-serve", "status": "ok"},
                                                        properties=["label_id", "energy"])}
    assert len(frames) == len(ok) == result.campaign.n_labels
    assert all(f.info["REF_energy"] == pytest.approx(ok[f.info["label_id"]]["energy"]) for f in frames)
    # the report holds the parity figure of the last committee, loaded once: a second download reuses it
    last = max((it for it in result.iterations if it.n_labelled), key=lambda it: it.iteration)
    for n in (1, 2):
        with urllib.request.urlopen(base + "/campaigns/cu-serve/report.html", timeout=300) as r:
            page = r.read().decode()
        assert "<h1>Campaign cu-serve</h1>" in page and "data:image/png;base64," in page
        assert '<figure id="parity">' in page and f"committee of iteration {last.iteration}" in page
        assert loads == [list(last.model_ids)], n


def test_hostile_names_are_harmless(browser, served):
    from urllib.parse import quote

    from selenium.webdriver.common.by import By

    base, _, _ = served
    for name in (INJECT, "<script>window.__xss=2</script>", "cu-serve\x00"):
        browser.get(f"{base}/campaigns/{quote(name, safe='')}")
        assert browser.execute_script("return window.__xss") is None
        assert browser.find_element(By.ID, "missing").text.startswith("There is no campaign named")
        assert {"cu-serve", XSS} <= set(_texts(browser, "#known a"))  # the 404 lists the real ones
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/api/campaigns/{quote(name, safe='')}", timeout=30)
        assert err.value.code == 404
    # the stored hostile name opens as a page whose title is that text
    browser.get(f"{base}/campaigns/{quote(XSS, safe='')}")
    assert browser.find_element(By.ID, "campaign-name").text == f"md campaign {XSS}"
    assert browser.execute_script("return window.__xss") is None


def test_a_new_iteration_appears_without_a_reload(browser, served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, settings, result = served
    browser.get(base + "/campaigns/cu-serve")
    browser.execute_script("window.__same_page = 'yes'")
    new = result.iterations[-1].model_copy(update={"iteration": 2, "n_train_labels": 999, "stop_reason": None})
    with CampaignDB.from_settings(settings) as db:
        db.upsert("iterations", [new])
    try:
        WebDriverWait(browser, 20).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, '#iteration-table tr[data-iteration="2"]'))
        assert _texts(browser, '#iteration-table tr[data-iteration="2"] td')[1] == "999"
        assert browser.execute_script("return window.__same_page") == "yes"  # no reload
        assert len(browser.find_elements(By.CSS_SELECTOR, "#chart-deviation figure")) == 3  # redrawn
        assert browser.find_element(By.ID, "live-state").text.startswith("live")
    finally:
        with CampaignDB.from_settings(settings) as db:
            db.iterations.remove_docs({"campaign": "cu-serve", "iteration": 2})
