"""The stop with a confidence bound and calibrated trust levels, piece by piece: the bound against scipy and
Wilson's equation, the effective number of frames, the rule, patience over stored records, the stage's trust
levels in raw units, and the one-line refusals of bad settings."""

import numpy as np
import pytest
from scipy.stats import beta, binom

from almat.campaign.config import ConfigError, ConvergenceSettings, load_config
from almat.campaign.convergence import RULES, ConfidenceBoundRule, apply_patience, get_rule
from almat.campaign.exploration import ExplorationReport
from almat.campaign.md import earlier_passes, effective_stage, latest_calibration
from almat.campaign.settings.md import DEFAULT_ADAPTIVE_LO, AdaptiveTrust, StageSettings, SystemSettings
from almat.schemas import CalibrationDoc, IterationDoc
from almat.uncertainty.calibration import convergence_check, effective_n, share_lower_bound

CU = {"name": "Cu", "crystalstructure": "fcc", "a": 3.61, "cubic": True}
MD = {"name": "bound", "structures": [{"bulk": CU}]}


# -- the bound ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("successes, n", [(8, 8), (7, 8), (5, 8), (1, 8), (19, 20), (45, 50), (3.5, 4.2)])
@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95])
def test_clopper_pearson_is_the_beta_quantile(successes, n, confidence):
    expected = beta.ppf(1 - confidence, successes, n - successes + 1)
    assert share_lower_bound(successes, n, confidence, "clopper-pearson") == pytest.approx(expected, rel=1e-12)
    if successes == n:  # all n pass: the bound solves p^n = 1 - confidence
        assert share_lower_bound(n, n, confidence, "clopper-pearson") == pytest.approx((1 - confidence) ** (1 / n))
    if float(successes).is_integer():  # the exact binomial tail at the bound is 1 - confidence
        p = share_lower_bound(successes, n, confidence, "clopper-pearson")
        assert binom.sf(successes - 1, n, p) == pytest.approx(1 - confidence, rel=1e-8)


@pytest.mark.parametrize("successes, n", [(8, 8), (7, 8), (4, 8), (19, 20), (2.5, 7.8)])
def test_wilson_solves_the_score_equation(successes, n):
    confidence = 0.9
    z = 1.2815515655446004  # Phi^-1(0.9)
    p_hat = successes / n
    p = share_lower_bound(successes, n, confidence, method="wilson")
    assert p < p_hat
    # Wilson's lower end: the p below p_hat with (p_hat - p)^2 = z^2 p (1 - p) / n
    assert (p_hat - p) ** 2 == pytest.approx(z * z * p * (1 - p) / n, rel=1e-9)
    assert share_lower_bound(7, 8, 0.9, "wilson") == pytest.approx(0.66043, abs=5e-5)


def test_bounds_grow_with_the_frames_and_clopper_pearson_is_the_stricter():
    cp = [share_lower_bound(0.9 * n, n, 0.9, "clopper-pearson") for n in (8, 16, 50, 300)]
    wilson = [share_lower_bound(0.9 * n, n, 0.9, "wilson") for n in (8, 16, 50, 300)]
    assert cp == sorted(cp) and wilson == sorted(wilson) and all(c < w < 0.9 for c, w in zip(cp, wilson))
    assert share_lower_bound(0, 8, 0.9, "clopper-pearson") == 0.0 and share_lower_bound(0, 8, 0.9) == 0.0


def test_bad_bound_arguments_are_refused_in_one_line():
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"^confidence must be strictly between 0 and 1 \(e.g. 0.9\), got"):
            share_lower_bound(4, 8, bad, "clopper-pearson")
    with pytest.raises(ValueError, match="unknown confidence interval 'exact'; valid: clopper-pearson, wilson"):
        share_lower_bound(4, 8, 0.9, "exact")
    with pytest.raises(ValueError, match="successes must be within"):
        share_lower_bound(9, 8, 0.9)
    with pytest.raises(ValueError, match="trials must be > 0"):
        share_lower_bound(0, 0, 0.9)


def test_effective_n_combines_explored_and_calibration_frames():
    assert effective_n(300, 8) == pytest.approx(1 / (1 / 300 + 1 / 8))  # 7.79: the 8 calibration frames rule
    assert effective_n(300, 8) < 8 and effective_n(8, 300) == effective_n(300, 8)
    assert effective_n(300, 2400) == pytest.approx(266.67, abs=0.01)
    assert effective_n(300, None) == 300 and effective_n(0, 8) == 0


# -- the check and the rule -----------------------------------------------------------------------------------


def _calibration(n_samples, factor=2.0):
    rng = np.random.default_rng(n_samples)
    u = rng.uniform(0.01, 0.1, n_samples)
    return CalibrationDoc(factor=factor, method="lstsq", quantile=1.5, coverage=0.9, empirical_coverage=0.9,
                          n_samples=n_samples, predicted=u.tolist(), observed=(factor * u).tolist())


def test_the_check_carries_the_bound_on_the_effective_frames():
    explored = np.linspace(0.001, 0.1, 200)  # k u from 0.002 to 0.2: 149 of 200 below 0.15
    d = convergence_check(explored, _calibration(8), 0.15, conv_accuracy=0.65, confidence=0.9)
    n_eff = effective_n(200, 8)
    assert d.fraction_below == pytest.approx(149 / 200) and d.n_effective == pytest.approx(n_eff)
    assert d.lower_bound == pytest.approx(share_lower_bound(149 / 200 * n_eff, n_eff, 0.9))
    assert d.stop and not d.bound_stop and d.lower_bound < 0.65  # the point rule stops, the bound does not
    many = convergence_check(explored, _calibration(400), 0.15, conv_accuracy=0.65, confidence=0.9)
    assert many.bound_stop and many.lower_bound > d.lower_bound  # 400 calibration frames: a tight bound
    assert "90% lower bound" in many.bound_reason() and ">= conv_accuracy 0.65" in many.bound_reason()
    bare = convergence_check(explored, 2.0, 0.15, conv_accuracy=0.65, confidence=0.9)
    assert bare.n_effective == 200  # a bare k: the explored frames only
    assert convergence_check(explored, 2.0, 0.15).lower_bound is None  # no confidence: no bound, as before
    with pytest.raises(ValueError, match="^conv_confidence must be strictly between 0 and 1"):
        convergence_check(explored, 2.0, 0.15, confidence=1.0)


def test_confidence_bound_rule():
    assert RULES["confidence_bound"] is ConfidenceBoundRule and ConfidenceBoundRule.needs_calibration
    assert get_rule(ConvergenceSettings(rule="confidence_bound")) == ConfidenceBoundRule(0.9, "wilson")
    rule = get_rule(ConvergenceSettings(rule="confidence_bound", conv_confidence=0.8, conv_interval="clopper-pearson"))
    assert rule == ConfidenceBoundRule(0.8, "clopper-pearson")
    report = ExplorationReport({"accurate": 200}, np.linspace(0.001, 0.1, 200))
    assert rule.check(report, None) == (False, "")
    check = convergence_check(report.deviations, _calibration(400), 0.15, 0.65, confidence=0.8,
                              interval="clopper-pearson")
    assert rule.check(report, check) == (True, check.bound_reason())
    assert rule.check(report, convergence_check(report.deviations, _calibration(8), 0.15, 0.65))[0] is False


# -- patience, across stored records ---------------------------------------------------------------------------


def test_patience_counts_passes_in_a_row():
    assert apply_patience(True, "ok", [], 1) == (True, "ok", 1)
    assert apply_patience(False, "no", [True, True], 2) == (False, "no", 0)
    converged, reason, streak = apply_patience(True, "ok", [True, False, True], 2)
    assert converged and streak == 2 and "passed 2 iterations in a row (conv_patience 2)" in reason
    converged, reason, streak = apply_patience(True, "ok", [True, False], 3)
    assert not converged and streak == 1 and "passed 1 of conv_patience 3" in reason
    with pytest.raises(ValueError, match="conv_patience must be >= 1"):
        apply_patience(True, "ok", [], 0)


def test_patience_resumes_from_the_records_of_the_stage(db):
    def record(i, stage, **kw):
        return IterationDoc(campaign="c", iteration=i, trust_lo=0.05, trust_hi=0.3, stage=stage, **kw)

    db.upsert("iterations", [
        record(0, 0, converged=True),  # a record from before rule_passed: converged stands for it
        record(1, 1, rule_passed=False), record(2, 1, rule_passed=True),
        record(3, 1, rule_passed=True, calibration=_calibration(8, factor=3.0)),
        record(4, 1, rule_passed=False), record(5, 1, rule_passed=True, calibration=_calibration(8, factor=5.0))])
    assert earlier_passes(db, "c", 0, 0) == [] and earlier_passes(db, "c", 9, 0) == [True]
    assert earlier_passes(db, "c", 4, 1) == [False, True, True]
    assert apply_patience(True, "ok", earlier_passes(db, "c", 4, 1), 3)[0]  # a resumed iteration 4 would stop
    assert not apply_patience(True, "ok", earlier_passes(db, "c", 6, 1), 3)[0]  # iteration 4 broke the streak
    assert latest_calibration(db, "c")[0] == 5 and latest_calibration(db, "c", before=5)[1].factor == 3.0
    assert latest_calibration(db, "other") is None


# -- trust levels in calibrated units ----------------------------------------------------------------------------


def _stage(**kw):
    return load_config({**MD, "sampler": {"trust_lo": 0.1, "trust_hi": 0.6, **kw}}).sampler.stage_list()[0]


def test_calibrated_trust_levels_are_divided_by_the_latest_k():
    stage = _stage(trust_units="calibrated", adaptive_lo=False)
    raw = stage.resolved(4.0)
    assert (raw.trust_lo, raw.trust_hi, raw.trust_units, raw.adaptive_lo) == (0.025, 0.15, "raw", None)
    first = stage.resolved(None)  # iteration 0, no k yet: hi as if k = 1, lo as set (adaptive_lo: false)
    assert (first.trust_lo, first.trust_hi) == (0.1, 0.6)
    default = _stage(trust_units="calibrated").resolved(None)  # no k, no adaptive_lo: lo is adaptive
    assert default.adaptive_lo == AdaptiveTrust(**DEFAULT_ADAPTIVE_LO) and default.trust_hi == 0.6
    assert _stage(trust_units="calibrated").resolved(4.0).adaptive_lo is None  # with k: lo / k
    adaptive = _stage(trust_units="calibrated", adaptive_lo={"number": 3, "lo_min": 0.04, "lo_max": 0.2}).resolved(4.0)
    assert adaptive.adaptive_lo == AdaptiveTrust(number=3, lo_min=0.01, lo_max=0.05)
    systems = StageSettings.model_construct(**{**stage.__dict__, "systems": [
        SystemSettings(structures=[0], trust_hi=1.0), SystemSettings(structures=[0])]}).resolved(2.0)
    assert [systems.trust(s).hi for s in systems.systems] == [0.5, 0.3]
    with pytest.raises(ValueError, match="k > 0"):
        stage.resolved(0.0)


def test_raw_levels_stay_and_single_model_uncertainty_defaults_to_adaptive_lo():
    raw = _stage().resolved(4.0)
    assert (raw.trust_lo, raw.trust_hi, raw.adaptive_lo) == (0.1, 0.6, None)  # raw units: k plays no part
    assert _stage().resolved(4.0, single_model=True).adaptive_lo == AdaptiveTrust(**DEFAULT_ADAPTIVE_LO)
    assert _stage(adaptive_lo=False).resolved(None, single_model=True).adaptive_lo is None
    shallow = load_config({**MD, "learner": {"uncertainty": "shallow"}})
    assert effective_stage(shallow, None).adaptive_lo == AdaptiveTrust(**DEFAULT_ADAPTIVE_LO)
    assert effective_stage(load_config(MD), None).adaptive_lo is None  # a committee keeps its trust_lo
    calibrated = load_config({**MD, "sampler": {"trust_units": "calibrated", "trust_hi": 0.9}})
    state = {"starts": None, "stage": 0, "stage_iteration": 2, "trust_factor": 3.0}
    assert effective_stage(calibrated, state).trust_hi == pytest.approx(0.3)


# -- bad input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 1.2, -0.5])
def test_a_confidence_outside_0_1_is_refused_in_one_line(value):
    with pytest.raises(ConfigError) as err:
        load_config({**MD, "convergence": {"rule": "confidence_bound", "conv_confidence": value}})
    message = str(err.value)
    assert "\n" not in message and "convergence.conv_confidence" in message
    assert f"must be strictly between 0 and 1 (e.g. 0.9), got {value}" in message


def test_calibrated_trust_levels_without_calibration_frames_are_refused_in_one_line():
    for cfg, where in [
        ({"sampler": {"trust_units": "calibrated"}}, "sampler.trust_units"),
        ({"sampler": {"stages": [{}, {"trust_units": "calibrated"}]}}, "sampler.stages.1.trust_units"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_config({**MD, **cfg, "convergence": {"rule": "accurate_ratio", "calibration_samples": 0}})
        assert "\n" not in str(err.value)
        assert f"{where}: calibrated trust levels need calibration frames" in str(err.value)
    with pytest.raises(ConfigError, match=r"sampler.trust_units: Input should be 'raw' or 'calibrated'"):
        load_config({**MD, "sampler": {"trust_units": "sigma"}})
    assert load_config({**MD, "sampler": {"trust_units": "calibrated"}}).sampler.trust_units == "calibrated"
    with pytest.raises(ConfigError, match="conv_patience: Input should be greater than or equal to 1"):
        load_config({**MD, "convergence": {"conv_patience": 0}})


def test_new_settings_at_their_defaults_keep_the_fingerprint():
    base = load_config(MD).fingerprint()
    assert load_config({**MD, "sampler": {"trust_units": "raw"}}).fingerprint() == base
    assert load_config({**MD, "convergence": {"rule": "confidence_bound", "conv_patience": 3}}).fingerprint() == base
    assert load_config({**MD, "sampler": {"trust_units": "calibrated"}}).fingerprint() != base
    staged = {**MD, "sampler": {"stages": [{"name": "a"}]}}
    assert load_config(staged).fingerprint() != load_config(
        {**MD, "sampler": {"stages": [{"name": "a", "trust_units": "calibrated"}]}}).fingerprint()


# -- status and serve show the bound beside the share ----------------------------------------------------------


def test_status_and_the_campaign_page_show_the_bound(db):
    from typer.testing import CliRunner

    from almat.campaign.kinds import KINDS
    from almat.cli import app
    from almat.schemas import CampaignDoc

    db.upsert("campaigns", [CampaignDoc(name="cu", config={"kind": "md"}, config_fingerprint="f", n_iterations=2)])
    db.upsert("iterations", [IterationDoc(campaign="cu", iteration=i, trust_lo=0.05, trust_hi=0.3,
                                          calibrated_fraction=0.975, calibrated_fraction_bound=[0.8123, 0.9071][i],
                                          confidence_level=0.9, bound_n_effective=7.8) for i in range(2)])
    for width, bounds in (("80", ["81.2", "90.7"]), ("200", ["81.23", "90.71"])):
        out = CliRunner().invoke(app, ["status", "cu"], env={"COLUMNS": width})
        assert out.exit_code == 0 and all(len(line) <= int(width) for line in out.output.splitlines()), out.output
        lines = [line.replace("│", " ").split() for line in out.output.splitlines()]
        rows = [[x for x in line if x != "-"] for line in lines if line[:1] in (["0"], ["1"])]
        assert [row[-2:] for row in rows] == [["97.5", bounds[0]], ["97.5", bounds[1]]], out.output
    rows = CliRunner().invoke(app, ["status", "cu", "--json"])
    assert '"below_tolerance_bound_pct": 90.71' in rows.output
    page = KINDS["md"].page_row(IterationDoc(campaign="cu", iteration=0, trust_lo=0.05, trust_hi=0.3,
                                             calibrated_fraction_bound=0.9071))
    assert page["below_tol_bound"] == 0.9071
    assert ("bound %", "below_tol_bound", "pct") in KINDS["md"].page_columns
    # a campaign without a bound keeps its table: the column is left out
    db.upsert("iterations", [IterationDoc(campaign="old", iteration=0, trust_lo=0.05, trust_hi=0.3)])
    db.upsert("campaigns", [CampaignDoc(name="old", config={"kind": "md"}, config_fingerprint="f")])
    assert "bound %" not in CliRunner().invoke(app, ["status", "old"], env={"COLUMNS": "200"}).output
