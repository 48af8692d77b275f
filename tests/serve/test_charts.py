"""``almat serve`` in chromium over synthetic stores: the iteration table fits a 1400 px window, error axes
never go below zero."""

from __future__ import annotations

import pytest

from almat.settings import AlmatSettings
from almat.stores import CampaignDB

from serve_helpers import load_bench, screenshot

bench = load_bench()
STOP = "calibrated: 97.3% of explored frames have k·σ below the force tolerance 0.05 eV/Å (conv_accuracy 0.95)"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """An md campaign with every column of its table filled (large counts, a long stop reason), and one of a
    single iteration whose held-out force RMSE is small."""
    from almat.schemas import CampaignDoc, TestErrors

    tmp = tmp_path_factory.mktemp("charts")
    settings = AlmatSettings(db_path=tmp / "db", run_dir=tmp / "runs")
    with CampaignDB.from_settings(settings) as db:
        its = bench.fill_store(db, n_iterations=12, n_labels=300, n_models=2)["iterations"]
        db.upsert("iterations", [its[-1].model_copy(update={
            "stop_reason": STOP, "n_train_labels": 123456, "n_frames_explored": 1234567, "n_labelled": 12345,
            "n_failed_labels": 1234})])
        small = its[0].model_copy(update={"campaign": "small", "test_errors": TestErrors(
            n_structures=8, force_rmse=0.0021, energy_rmse_per_atom=0.0004), "accurate_ratio": 0.97})
        db.upsert("iterations", [small])
        db.upsert("campaigns", [CampaignDoc(name="small", config={"kind": "md"}, config_fingerprint="s",
                                            chemsys="Cu")])
    base, server = bench.start_server(settings)
    yield base
    server.should_exit = True


def test_iteration_table_fits_1400_px_with_short_titles_and_a_legend(browser, served):
    from selenium.webdriver.common.by import By

    from almat.campaign.kinds import KINDS

    browser.set_window_size(1400, 1000)
    browser.get(served + "/campaigns/bench")
    table = browser.find_element(By.ID, "iteration-table")
    box = browser.execute_script("const s = arguments[0].parentElement; return [s.scrollWidth, s.clientWidth, "
                                 "document.documentElement.scrollWidth, document.documentElement.clientWidth]",
                                 table)
    assert box[0] <= box[1] and box[2] <= box[3], box
    md = KINDS["md"]
    heads = table.find_elements(By.CSS_SELECTOR, "thead th")
    assert [h.text for h in heads] == [md.short.get(key, title) for title, key, _ in md.page_columns]
    # a short title carries the full one, and the legend says what it means
    full = {h.text: h.get_attribute("title") for h in heads}
    assert full["F RMSE"] == "F RMSE (eV/Å)" and full["acc%"] == "accurate %" and not full["it"]
    legend = browser.find_element(By.ID, "iteration-legend").text
    assert md.legend in legend and "E RMSE: held-out energy RMSE (eV/atom)" in legend
    assert STOP in table.text and "123456" in table.text
    screenshot(browser, "iteration_table")


def test_error_axes_start_at_zero(browser, served):
    browser.get(served + "/campaigns/small")
    svg = browser.find_element("css selector", "#chart-learning svg")
    assert float(svg.get_attribute("data-y-min")) == 0.0
    assert float(svg.get_attribute("data-y-max")) > 0.0021
    ticks = browser.execute_script(
        "return [...arguments[0].querySelectorAll('g.axes text[text-anchor=end]')].map((t) => t.textContent)", svg)
    assert ticks and all(not t.startswith("-") for t in ticks), ticks
    # the axis code itself: small, equal, zero and no values never give an axis below zero
    axis = "const a = window.almat.axis(arguments[0], arguments[1], 200, 0); return [a.a, a.b];"
    for spec, values in (({}, [0.0021]), ({}, [0.0021, 0.0021]), ({}, [0.0021, 0.002]), ({}, [0.0]),
                         ({}, []), ({"min": 0}, [0.0021]), ({"min": 0}, [0.0])):
        lo, hi = browser.execute_script(axis, spec, values)
        assert 0.0 <= lo < hi and hi >= max(values, default=0), (spec, values, lo, hi)
    lo, hi = browser.execute_script(axis, {"log": True}, [0.0021, 0.0])
    assert 0.0 < lo <= 0.0021 <= hi
    assert browser.execute_script(axis, {}, [-0.5, 0.2])[0] < -0.5 + 1e-9  # values below zero keep their room
