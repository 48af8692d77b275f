"""How often a stop rule stops too early: the point share against its lower confidence bound, on a
synthetic stream of explored frames calibrated on few held-out frames (issue 23).

Each trial is one decide step of a campaign whose true share of explored frames with an error below the
force tolerance is ``p``:

- ``N`` explored frames with model deviations ``u`` (log-normal), true errors ``e = k u eps`` (``eps``
  log-normal with mean 1 and ``--noise`` in log space: a Spearman rho of about 0.8);
- ``n_cal`` held-out frames drawn stratified over ``u`` (as ``stratified_sample`` does), ``k`` fitted on
  them by least squares (as ``fit_factor``);
- the calibrated share ``p_hat``: explored frames with ``k u`` below the tolerance, the tolerance set so that
  the true share of the error distribution is ``p``.

Rules: ``point`` (``p_hat >= conv_accuracy``, almat's ``calibrated`` rule), ``cp`` and ``wilson`` (the
90 % lower bound of ``p_hat`` on ``effective_n(N, n_cal)`` frames, the ``confidence_bound`` rule), and
``observed`` (Clopper-Pearson on the held-out frames' own errors, n = n_cal), each also with
``conv_patience: 2`` (two independent iterations in a row). ``binomial``: the plain picture of the issue, a
share measured as a binomial of ``n_cal`` frames. A stop while ``p < conv_accuracy`` is too early.

    python benchmarks/stop_bound.py              # 4000 trials per point
    python benchmarks/stop_bound.py --quick      # 400 trials, fewer shares

Writes ``benchmark_results/stop_bound/results.json`` and ``stop_rate.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from almat.uncertainty.calibration import effective_n, share_lower_bound

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmark_results" / "stop_bound"
RULES = ("point", "cp", "wilson", "observed")


def _stratified(u: np.ndarray, n_cal: int, rng: np.random.Generator) -> np.ndarray:
    """Per trial (row), ``n_cal`` column indices, one at random from each of ``n_cal`` strata of sorted ``u``."""
    order = np.argsort(u, axis=1)
    edges = np.linspace(0, u.shape[1], n_cal + 1).astype(int)
    lo, hi = edges[:-1], edges[1:]
    pick = (lo + rng.random((u.shape[0], n_cal)) * (hi - lo)).astype(int)
    return np.take_along_axis(order, pick, axis=1)


def decide_once(p: float, n_frames: int, n_cal: int, trials: int, rng: np.random.Generator, noise: float,
                accuracy: float, confidence: float) -> dict[str, np.ndarray]:
    """Whether each rule stops, per trial, and the calibrated share (one iteration at true share ``p``)."""
    k_true, sigma_u = 5.0, 0.6
    big = np.exp(rng.normal(np.log(0.02), sigma_u, 400_000)) * np.exp(rng.normal(-noise**2 / 2, noise, 400_000))
    tol = float(np.quantile(k_true * big, p))  # the true share of frames with error < tol is p
    u = np.exp(rng.normal(np.log(0.02), sigma_u, (trials, n_frames)))
    e = k_true * u * np.exp(rng.normal(-noise**2 / 2, noise, u.shape))
    cal = _stratified(u, n_cal, rng)
    uc, ec = np.take_along_axis(u, cal, 1), np.take_along_axis(e, cal, 1)
    k_hat = (uc * ec).sum(1) / (uc * uc).sum(1)
    p_hat = (k_hat[:, None] * u < tol).mean(1)
    n_eff = effective_n(n_frames, n_cal)
    observed = (ec < tol).sum(1)
    return {
        "p_hat": p_hat,
        "point": p_hat >= accuracy,
        "cp": np.array([share_lower_bound(x * n_eff, n_eff, confidence, "clopper-pearson") >= accuracy
                        for x in p_hat]),
        "wilson": np.array([share_lower_bound(x * n_eff, n_eff, confidence, "wilson") >= accuracy for x in p_hat]),
        "observed": np.array([share_lower_bound(x, n_cal, confidence, "clopper-pearson") >= accuracy
                              for x in observed]),
    }


def binomial_stop(p: float, n_cal: int, trials: int, rng: np.random.Generator, accuracy: float,
                  confidence: float) -> dict[str, float]:
    x = rng.binomial(n_cal, p, trials)
    return {"point": float(np.mean(x / n_cal >= accuracy)),
            "cp": float(np.mean([share_lower_bound(k, n_cal, confidence, "clopper-pearson") >= accuracy for k in x]))}


def run(shares, n_cals, trials: int, n_frames: int, accuracy: float, confidence: float, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    rows = []
    for n_cal in n_cals:
        for p in shares:
            a = decide_once(p, n_frames, n_cal, trials, rng, noise, accuracy, confidence)
            b = decide_once(p, n_frames, n_cal, trials, rng, noise, accuracy, confidence)  # the next iteration
            row = {"n_cal": n_cal, "p_true": p, "p_hat_mean": float(a["p_hat"].mean()),
                   "p_hat_sd": float(a["p_hat"].std())}
            for rule in RULES:
                row[rule] = float(a[rule].mean())
                row[f"{rule}_patience2"] = float((a[rule] & b[rule]).mean())
            row["binomial"] = binomial_stop(p, n_cal, trials, rng, accuracy, confidence)
            rows.append(row)
    return rows


def summary(rows, accuracy: float) -> dict:
    """Per n_cal and rule: the mean stop rate over the true shares below conv_accuracy (too early) and over
    those at least 0.05 above it (in time)."""
    out = {}
    for n_cal in sorted({r["n_cal"] for r in rows}):
        mine = [r for r in rows if r["n_cal"] == n_cal]
        early = [r for r in mine if r["p_true"] < accuracy]
        late = [r for r in mine if r["p_true"] >= accuracy + 0.05 - 1e-9]
        out[n_cal] = {f"{rule}{suffix}": {"too_early": float(np.mean([r[rule + suffix] for r in early])),
                                          "in_time": float(np.mean([r[rule + suffix] for r in late]))}
                      for rule in RULES for suffix in ("", "_patience2")}
    return out


def plot(rows, accuracy: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cals = sorted({r["n_cal"] for r in rows})
    fig, axes = plt.subplots(1, len(n_cals), figsize=(5 * len(n_cals), 3.8), sharey=True, squeeze=False)
    for ax, n_cal in zip(axes[0], n_cals):
        mine = [r for r in rows if r["n_cal"] == n_cal]
        x = [r["p_true"] for r in mine]
        for key, style in (("point", "-o"), ("point_patience2", "--o"), ("cp", "-s"), ("wilson", "-^"),
                           ("cp_patience2", "--s"), ("observed", ":d")):
            ax.plot(x, [r[key] for r in mine], style, label=key, ms=4)
        ax.axvline(accuracy, color="k", lw=1)
        ax.set_title(f"{n_cal} calibration frames")
        ax.set_xlabel("true share below tolerance")
    axes[0][0].set_ylabel(f"P(stop), conv_accuracy {accuracy}")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="400 trials, 4 shares, 8 calibration frames")
    parser.add_argument("--trials", type=int, default=4000)
    parser.add_argument("--frames", type=int, default=300, help="explored frames per iteration")
    parser.add_argument("--n-cal", type=int, nargs="+", default=[8, 24, 80], help="calibration frames")
    parser.add_argument("--accuracy", type=float, default=0.9)
    parser.add_argument("--confidence", type=float, default=0.9)
    parser.add_argument("--noise", type=float, default=0.4, help="log-normal spread of error / (k u)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    shares = [0.8, 0.85, 0.88, 0.9, 0.92, 0.95, 0.97, 0.99]
    if args.quick:
        args.trials, shares, args.n_cal = 400, [0.85, 0.88, 0.95, 0.99], [8]
    start = time.perf_counter()
    rows = run(shares, args.n_cal, args.trials, args.frames, args.accuracy, args.confidence, args.noise, args.seed)
    result = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "rows": rows, "summary": summary(rows, args.accuracy), "seconds": time.perf_counter() - start}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    plot(rows, args.accuracy, args.out / "stop_rate.png")
    print(f"P(stop) per true share, conv_accuracy {args.accuracy}, {args.confidence:.0%} bounds, "
          f"{args.frames} explored frames, {args.trials} trials")
    print(f"{'n_cal':>5} {'p':>5} {'p_hat':>11} " + " ".join(f"{r:>8}" for r in RULES)
          + f" {'point×2':>8} {'cp×2':>8} {'binom pt':>8}")
    for r in rows:
        print(f"{r['n_cal']:>5} {r['p_true']:>5.2f} {r['p_hat_mean']:>5.3f}±{r['p_hat_sd']:.3f} "
              + " ".join(f"{r[k]:>8.3f}" for k in RULES)
              + f" {r['point_patience2']:>8.3f} {r['cp_patience2']:>8.3f} {r['binomial']['point']:>8.3f}")
    for n_cal, rules in result["summary"].items():
        print(f"n_cal {n_cal}: " + "; ".join(f"{k} early {v['too_early']:.3f} in time {v['in_time']:.3f}"
                                             for k, v in rules.items()))
    print(f"wrote {args.out / 'results.json'} and stop_rate.png ({result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
