import math

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from scipy.stats import spearmanr

from almat.report.plots import plot_calibration
from almat.schemas import CalibrationDoc
from almat.uncertainty import (
    calibrate,
    committee_errors,
    conformal_quantile,
    convergence_check,
    empirical_coverage,
    fit_factor,
    spearman,
    stratified_sample,
)


def _labelled_cu(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.61).repeat((2, 2, 2))
        atoms.set_cell(atoms.cell * (1 + rng.uniform(-0.04, 0.04)), scale_atoms=True)
        atoms.positions += rng.normal(0, rng.uniform(0.02, 0.15), size=atoms.positions.shape)
        atoms.calc = EMT()
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
        out.append(atoms)
    return out


@pytest.fixture(scope="module")
def held_out(tiny_committee):
    """Real committee deviations and real errors vs EMT on 40 frames the committee has not seen."""
    committee, _ = tiny_committee
    frames = _labelled_cu(40, seed=11)
    deviation, error = committee_errors(committee, frames)
    return committee, frames, deviation, error


def test_committee_errors_are_max_atomic_deviation_and_error(held_out):
    committee, frames, deviation, error = held_out
    pred = committee.predict(frames[:3])
    np.testing.assert_allclose(deviation[:3], pred.model_deviation, rtol=1e-5)  # float32, other batch
    for i in range(3):
        manual = max(np.linalg.norm(pred.mean_forces(i)[a] - frames[i].get_forces()[a]) for a in range(len(frames[i])))
        assert error[i] == pytest.approx(manual, rel=1e-5)
    assert np.all(deviation > 0) and np.all(error > 0)
    assert committee_errors(committee, []) == (pytest.approx(np.zeros(0)), pytest.approx(np.zeros(0)))


def test_recovers_a_known_factor(held_out):
    _, _, deviation, _ = held_out
    rng = np.random.default_rng(0)
    observed = 3.0 * deviation + rng.normal(0, 0.05 * deviation.mean(), size=deviation.size)
    observed = np.clip(observed, 0, None)
    assert fit_factor(deviation, observed) == pytest.approx(3.0, rel=0.03)
    assert fit_factor(deviation, observed, "median") == pytest.approx(3.0, rel=0.05)
    # the least-squares factor is the closed form through the origin
    assert fit_factor(deviation, observed) == pytest.approx(np.dot(deviation, observed) / np.dot(deviation, deviation))
    # a few wild outliers move least squares, not the median ratio
    spoiled = observed.copy()
    spoiled[np.argsort(deviation)[-3:]] *= 6
    assert abs(fit_factor(deviation, spoiled, "median") - 3.0) < abs(fit_factor(deviation, spoiled) - 3.0)
    with pytest.raises(ValueError, match="unknown factor method"):
        fit_factor(deviation, observed, "mean")


def test_conformal_coverage_over_random_splits(held_out):
    """Errors 3 x the real deviations with multiplicative noise; split 50/50 many times."""
    _, _, deviation, _ = held_out
    rng = np.random.default_rng(1)
    u = np.tile(deviation, 5)  # 200 frames: the 40 real deviations, each with 5 noise draws
    e = 3.0 * u * rng.lognormal(0.0, 0.4, size=u.size)
    coverages = []
    n_cal = 100
    for _ in range(400):
        order = rng.permutation(u.size)
        cal, test = order[:n_cal], order[n_cal:]
        doc = calibrate(u[cal], e[cal], coverage=0.9)
        coverages.append(empirical_coverage(u[test], e[test], doc.quantile * doc.factor))
    expected = math.ceil((n_cal + 1) * 0.9) / (n_cal + 1)  # 0.901: the finite-sample guarantee
    assert np.mean(coverages) == pytest.approx(expected, abs=0.015)
    assert np.mean(coverages) >= 0.9 - 0.01


def test_quantile_is_the_corrected_order_statistic(held_out):
    _, _, deviation, error = held_out
    n = deviation.size
    scores = np.sort(error / (2.0 * deviation))
    assert conformal_quantile(deviation, error, 0.9, factor=2.0) == pytest.approx(scores[math.ceil((n + 1) * 0.9) - 1])
    # k cancels in the bound q k u
    q1, q2 = conformal_quantile(deviation, error, 0.8, 1.0), conformal_quantile(deviation, error, 0.8, 4.0)
    assert q1 == pytest.approx(4.0 * q2)
    # too few frames for the coverage asked: no finite bound
    assert conformal_quantile(deviation[:5], error[:5], 0.9) == math.inf
    doc = calibrate(deviation[:5], error[:5], 0.9)
    assert doc.quantile == math.inf and doc.empirical_coverage == 1.0


@pytest.mark.parametrize("coverage", [0.0, 1.0, -0.2, 1.5, float("nan")])
def test_coverage_outside_0_1_is_an_error(held_out, coverage):
    _, _, deviation, error = held_out
    with pytest.raises(ValueError, match="coverage must be strictly between 0 and 1"):
        calibrate(deviation, error, coverage)
    with pytest.raises(ValueError, match="coverage must be strictly between 0 and 1"):
        conformal_quantile(deviation, error, coverage)


def test_bad_inputs(held_out):
    _, _, deviation, error = held_out
    with pytest.raises(ValueError, match="40 predicted uncertainties but 39"):
        calibrate(deviation, error[:-1])
    with pytest.raises(ValueError, match=">= 0"):
        calibrate(-deviation, error)
    with pytest.raises(ValueError, match="no frames"):
        calibrate([], [])
    with pytest.raises(ValueError, match="all predicted uncertainties are 0"):
        fit_factor(np.zeros(4), np.ones(4))


def test_spearman_matches_scipy_on_real_errors(held_out):
    _, _, deviation, error = held_out
    assert spearman(deviation, error) == pytest.approx(spearmanr(deviation, error).statistic)
    assert spearman(deviation, error) > 0.5  # the committee's deviation does rank its errors
    assert math.isnan(spearman(np.ones(5), np.arange(5.0)))


def test_calibration_doc_and_stopping_rule(held_out, tmp_path):
    _, _, deviation, error = held_out
    doc = calibrate(deviation, error, coverage=0.8, iteration=2, campaign="cu")
    assert doc.n_samples == 40 and doc.predicted == pytest.approx(deviation.tolist())
    assert doc.spearman == pytest.approx(spearmanr(deviation, error).statistic)
    assert doc.empirical_coverage >= 0.8
    again = CalibrationDoc.model_validate(doc.model_dump())
    assert again == doc
    np.testing.assert_allclose(doc.upper_bound(deviation), doc.quantile * doc.factor * deviation)

    explored = np.linspace(0.01, 0.1, 10)  # 10 explored frames' deviations (eV/Å)
    calibrated = doc.factor * explored
    tol = float(np.sort(calibrated)[8]) * 1.0001  # 9 of 10 frames below the tolerance
    assert convergence_check(explored, doc, tol, conv_accuracy=0.9).stop
    d = convergence_check(explored, doc, tol, conv_accuracy=0.95)
    assert not d.stop and d.fraction_below == pytest.approx(0.9) and "90.0% of 10 frames" in d.reason
    # the conformal bound is stricter than the calibrated uncertainty when q > 1
    assert doc.quantile > 1
    assert not convergence_check(explored, doc, tol, conv_accuracy=0.9, bound="conformal").stop
    assert convergence_check(explored, doc.factor, tol, 0.9).stop  # a bare factor works too
    assert not convergence_check([], doc, tol).stop
    with pytest.raises(ValueError):
        convergence_check(explored, doc, 0.0)
    with pytest.raises(ValueError):
        convergence_check(explored, doc, tol, conv_accuracy=1.2)
    with pytest.raises(ValueError, match="needs a CalibrationDoc"):
        convergence_check(explored, 2.0, tol, bound="conformal")


def test_calibration_plot(held_out, tmp_path):
    import matplotlib.image

    _, _, deviation, error = held_out
    doc = calibrate(deviation, error, coverage=0.9, iteration=1)
    path = plot_calibration(doc, tmp_path / "plots" / "calibration_it1.png")
    assert path.exists() and path.stat().st_size > 20_000
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 1000 and image.shape[1] > 1000  # 6 x 6.8 in at 200 dpi
    # log axes when the values span decades; a doc without a finite bound still plots
    wide = calibrate(np.geomspace(1e-3, 1, 8), np.geomspace(2e-3, 2, 8), 0.9)
    assert wide.quantile == math.inf
    assert plot_calibration(wide, tmp_path / "wide.png").exists()


# --- the held-out sample ---------------------------------------------------------------------------

def test_stratified_sample_spans_the_deviation_range_and_respects_eligibility():
    rng = np.random.default_rng(0)
    u = np.concatenate([rng.uniform(0.0, 0.02, 80), rng.uniform(0.1, 0.5, 20)])  # mostly confident frames
    eligible = np.ones(u.size, dtype=bool)
    eligible[[0, 1, 2]] = False
    picks = stratified_sample(u, 5, rng, eligible)
    assert len(picks) == len(set(picks)) == 5 and not {0, 1, 2} & set(picks)
    # one pick per fifth of the sorted frames: the confident 80 % must provide 4 of the 5
    assert sum(u[picks] < 0.05) == 4 and sum(u[picks] >= 0.1) == 1
    assert stratified_sample(u[:3], 5, rng) == [0, 1, 2]
    assert stratified_sample(u, 0, rng) == []
    assert stratified_sample(u[:3], 2, rng, [False, False, False]) == []
    with pytest.raises(ValueError, match="eligibility"):
        stratified_sample(u, 2, rng, [True])


def test_stratified_sample_gives_every_frame_the_same_chance():
    """Representative of the explored frames (what the conformal bound assumes)."""
    rng = np.random.default_rng(1)
    u = rng.lognormal(-3, 1, 60)
    hits = np.zeros(u.size)
    for _ in range(3000):
        hits[stratified_sample(u, 6, rng)] += 1
    freq = hits / 3000
    np.testing.assert_allclose(freq, 0.1, atol=0.025)  # 6 of 60 frames each time
