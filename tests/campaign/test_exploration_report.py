"""The pieces of the MD explorer's decide step, without the workflow: the exploration report, the
convergence rules and the stage scheduler, on small hand-made records."""

from types import SimpleNamespace

import numpy as np
import pytest

from almat.campaign.config import ConvergenceSettings, SamplerSettings
from almat.campaign.convergence import RULES, AccurateRatioRule, CalibratedRule, get_rule
from almat.campaign.exploration import DEVIATION_BINS, ExplorationReport
from almat.campaign.scheduler import StageScheduler
from almat.schemas import CampaignStatus
from almat.uncertainty.calibration import convergence_check


def _walker(deviations, lo=0.05, hi=0.3):
    counts = {"accurate": sum(d < lo for d in deviations), "candidate": sum(lo <= d < hi for d in deviations),
              "failed": sum(d >= hi for d in deviations)}
    return SimpleNamespace(model_deviation=list(deviations), counts=counts)


# -- the exploration report ------------------------------------------------------------------------------


def test_report_counts_ratios_and_histogram():
    report = ExplorationReport.from_walkers([_walker([0.01, 0.02, 0.1, 0.5]), _walker([0.04, 0.2, 3.0, 1e3])])
    assert report.counts == {"accurate": 3, "candidate": 2, "failed": 3}
    assert report.n_frames == 8
    assert report.ratios == {"accurate": 3 / 8, "candidate": 2 / 8, "failed": 3 / 8}
    hist = report.histogram()
    assert hist.bin_edges == DEVIATION_BINS and sum(hist.counts) == 8
    # 0.01 and 0.02 fall in [0.01, 0.02) and [0.02, 0.03); 3.0 and 1e3 in the open last bin
    assert hist.counts[1] == 1 and hist.counts[2] == 1 and hist.counts[-1] == 2
    assert hist.counts[DEVIATION_BINS.index(0.03)] == 1  # 0.04
    np.testing.assert_array_equal(report.deviations, [0.01, 0.02, 0.1, 0.5, 0.04, 0.2, 3.0, 1e3])


def test_empty_report_has_zero_ratios_and_an_empty_histogram():
    report = ExplorationReport.from_walkers([])
    assert report.n_frames == 0 and report.ratios == {"accurate": 0.0, "candidate": 0.0, "failed": 0.0}
    assert report.histogram().counts == [0] * (len(DEVIATION_BINS) - 1)
    # walkers whose classes were not counted (no trust levels) still give deviations, but no frames
    report = ExplorationReport.from_walkers([SimpleNamespace(model_deviation=[0.1], counts={})])
    assert report.n_frames == 0 and report.deviations.size == 1 and report.histogram().counts[6] == 1


def test_histogram_takes_other_bins():
    report = ExplorationReport({"accurate": 2, "candidate": 0, "failed": 1}, np.array([0.1, 0.2, 0.9]))
    assert report.histogram([0.0, 0.5, 1.0]).counts == [2, 1]


# -- the convergence rules ---------------------------------------------------------------------------------


def test_rules_are_looked_up_by_name_with_their_settings():
    assert set(RULES) == {"calibrated", "confidence_bound", "accurate_ratio"}
    assert get_rule(ConvergenceSettings(rule="accurate_ratio", conv_accuracy=0.8)) == AccurateRatioRule(0.8)
    assert isinstance(get_rule(ConvergenceSettings()), CalibratedRule)
    assert CalibratedRule.needs_calibration and not AccurateRatioRule.needs_calibration
    with pytest.raises(ValueError, match="convergence.rule: unknown rule 'nope'; valid: calibrated, confidence_bound, accurate_ratio"):
        get_rule(SimpleNamespace(rule="nope"))


def test_accurate_ratio_rule():
    rule = AccurateRatioRule(0.75)
    converged, reason = rule.check(ExplorationReport({"accurate": 3, "candidate": 1, "failed": 0}), None)
    assert converged and reason == "accurate ratio 0.750 >= conv_accuracy 0.75"
    assert not rule.check(ExplorationReport({"accurate": 2, "candidate": 2, "failed": 0}), None)[0]
    assert not rule.check(ExplorationReport({"accurate": 0, "candidate": 0, "failed": 0}), None)[0]  # no frames
    assert not AccurateRatioRule(0.1).check(ExplorationReport({}), None)[0]


def test_calibrated_rule_follows_the_calibrated_check():
    report = ExplorationReport({"accurate": 4, "candidate": 0, "failed": 0}, np.array([0.01, 0.02, 0.03, 0.2]))
    rule = CalibratedRule()
    assert rule.check(report, None) == (False, "")  # no calibration yet: never converged
    # k = 2: k·u = 0.02, 0.04, 0.06, 0.4; 3 of 4 below 0.1
    passed = convergence_check(report.deviations, 2.0, tolerance=0.1, conv_accuracy=0.75)
    assert rule.check(report, passed) == (True, passed.reason) and "75.0% of 4 frames" in passed.reason
    failed = convergence_check(report.deviations, 2.0, tolerance=0.1, conv_accuracy=0.8)
    assert rule.check(report, failed) == (False, failed.reason)


# -- the stage scheduler -------------------------------------------------------------------------------------


def _state(stage, done):
    return {"starts": None, "stage": stage, "stage_iteration": done}


def test_a_converged_stage_moves_on_and_the_last_one_ends_the_campaign():
    s = StageScheduler(("nvt", None, "hot"), max_iterations=20)
    step = s.step(_state(0, 0), 0, True, "ok", 5)
    assert step.status == CampaignStatus.running and step.next_stage and step.state == _state(1, 0)
    assert step.stop_reason is None
    step = s.step(_state(1, 0), 1, False, "", 5)
    assert step.status == CampaignStatus.running and not step.next_stage and step.state == _state(1, 1)
    step = s.step(_state(2, 3), 9, True, "calibrated: 97% below tolerance", 5)
    assert step.status == CampaignStatus.converged and step.stop_reason == "calibrated: 97% below tolerance"
    assert not step.next_stage


def test_a_stage_ends_at_its_own_max_iterations():
    s = StageScheduler((None, None), max_iterations=20)
    step = s.step(_state(0, 2), 2, False, "", 3)  # the stage's 3rd iteration
    assert step.next_stage and step.state == _state(1, 0) and step.status == CampaignStatus.running
    step = s.step(_state(1, 2), 5, False, "", 3)
    assert step.status == CampaignStatus.max_iterations and step.stop_reason == "max_iterations (3) reached"


def test_the_campaign_max_iterations_ends_any_stage():
    s = StageScheduler(("nvt", "npt"), max_iterations=4)
    step = s.step(_state(0, 3), 3, False, "", 10)
    assert step.status == CampaignStatus.max_iterations
    assert step.stop_reason == "max_iterations (4) of the campaign reached in stage 0 (nvt)"
    step = s.step(_state(0, 3), 3, True, "ok", 10)  # moving on would need a 5th iteration
    assert step.status == CampaignStatus.max_iterations and step.next_stage


def test_nothing_learned_stops_only_a_stage_that_goes_on():
    s = StageScheduler((None, None), max_iterations=20)
    stall = "nothing new to learn"
    step = s.step(_state(0, 0), 0, False, "", 5, stall=stall)
    assert step.status == CampaignStatus.stopped and step.stop_reason == stall
    step = s.step(_state(0, 4), 4, False, "", 5, stall=stall)  # the stage is over: the next one may learn
    assert step.status == CampaignStatus.running and step.next_stage
    step = s.step(_state(1, 0), 5, True, "ok", 5, stall=stall)  # converged beats nothing learned
    assert step.status == CampaignStatus.converged


def test_resume_and_the_config():
    s = StageScheduler.from_config(SimpleNamespace(
        sampler=SamplerSettings(stages=[{"name": "a"}, {}]), convergence=ConvergenceSettings(max_iterations=7)))
    assert s == StageScheduler(("a", None), 7) and s.describe(0) == "stage 0 (a)" and s.describe(1) == "stage 1"
    assert s.resume(0, 2, False, 3) == (0, 2)
    assert s.resume(0, 3, False, 3) == (1, 0)
    assert s.resume(0, 1, True, 3) == (1, 0)
    assert s.resume(1, 3, True, 3) == (1, 3)  # the last stage: nowhere to go
