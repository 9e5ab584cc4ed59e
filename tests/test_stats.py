"""stats.py against the libraries that already do each thing: statsmodels, scipy, scikit-learn."""
import numpy as np
import pytest
from scipy import stats as st
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from medcore.stats import (bootstrap_interval, expected_calibration_error, mcnemar_exact, relative_improvement,
                           reliability_curve, wilson_interval)


@pytest.mark.parametrize("k,n", [(0, 10), (10, 10), (1, 3), (57, 200), (123, 4183), (1, 1)])
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_wilson_matches_statsmodels(k, n, alpha):
    ours = wilson_interval(k, n, alpha)
    ref = proportion_confint(k, n, alpha=alpha, method="wilson")
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_wilson_edge_cases():
    assert all(np.isnan(wilson_interval(0, 0)))
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def _paired(n, p_a, p_b, seed):
    rng = np.random.default_rng(seed)
    return rng.random(n) < p_a, rng.random(n) < p_b


@pytest.mark.parametrize("n,p_a,p_b,seed", [(200, 0.3, 0.35, 0), (50, 0.5, 0.5, 1), (400, 0.25, 0.4, 2),
                                            (12, 0.6, 0.4, 3)])
def test_mcnemar_matches_statsmodels(n, p_a, p_b, seed):
    a, b = _paired(n, p_a, p_b, seed)
    ours = mcnemar_exact(a, b)
    table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
    ref = mcnemar(table, exact=True)
    assert ours["b"] == table[0][1] and ours["c"] == table[1][0]
    assert ours["pvalue"] == pytest.approx(ref.pvalue, rel=1e-9)


def test_mcnemar_no_discordant_pairs():
    same = [True, False, True]
    assert mcnemar_exact(same, same) == {"b": 0, "c": 0, "n": 3, "pvalue": 1.0}
    with pytest.raises(ValueError):
        mcnemar_exact([True], [True, False])


def test_bootstrap_close_to_scipy_percentile():
    x = np.random.default_rng(0).random(300) < 0.4
    ours = bootstrap_interval(x, n_boot=4000, seed=1)
    ref = st.bootstrap((x.astype(float),), np.mean, n_resamples=4000, method="percentile",
                       rng=np.random.default_rng(2)).confidence_interval
    assert ours[0] == pytest.approx(ref.low, abs=0.01) and ours[1] == pytest.approx(ref.high, abs=0.01)
    assert ours == bootstrap_interval(x, n_boot=4000, seed=1)  # seeded: reproducible
    assert ours[0] < x.mean() < ours[1]


def test_bootstrap_paired_difference_and_custom_stat():
    a, b = _paired(500, 0.3, 0.45, 4)
    low, high = bootstrap_interval(b.astype(float) - a.astype(float), seed=0)
    assert 0 < low < high
    low, high = bootstrap_interval(np.arange(100), stat=np.median, n_boot=500)
    assert low < 49.5 < high


def test_relative_improvement():
    assert relative_improvement(0.30, 0.36) == pytest.approx(0.2)
    assert relative_improvement(0.5, 0.4) == pytest.approx(-0.2)
    assert np.isnan(relative_improvement(0, 0.4))


def test_ece_of_perfectly_calibrated_set_is_near_zero():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.25, 1.0, 50_000)
    correct = rng.random(conf.size) < conf
    assert expected_calibration_error(conf, correct) < 0.01


def test_ece_of_overconfident_set():
    conf = np.full(1000, 0.9)
    correct = np.arange(1000) < 600  # 60 % right at 90 % confidence
    assert expected_calibration_error(conf, correct) == pytest.approx(0.3)


def test_reliability_curve_matches_sklearn_bins_and_ece():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.25, 1.0, 2000)
    correct = rng.random(conf.size) < conf**2
    curve = reliability_curve(conf, correct, n_bins=10)
    assert curve["n"].sum() == conf.size
    assert (curve["confidence"].between(0.2, 1.0)).all()
    ece = (curve["n"] / curve["n"].sum() * (curve["accuracy"] - curve["confidence"]).abs()).sum()
    assert expected_calibration_error(conf, correct, n_bins=10) == pytest.approx(ece)
    all_right = reliability_curve([0.5, 0.9], [True, True], n_bins=5)
    assert list(all_right["accuracy"]) == [1.0, 1.0]


def test_grouped_accuracy():
    import pandas as pd
    from medcore.stats import grouped_accuracy

    df = pd.DataFrame({"tier": ["a", "a", "b", None], "correct": [True, False, True, True]})
    table = grouped_accuracy(df, "tier")
    assert list(table["tier"]) == ["a", "b", "unknown"] and list(table["n"]) == [2, 1, 1]
    assert table.loc[0, "accuracy"] == 0.5
    assert (table.loc[0, "ci_low"], table.loc[0, "ci_high"]) == wilson_interval(1, 2)


def test_fractional_credit_of_ties_is_kept_in_groups_and_intervals():
    import pandas as pd
    from medcore.stats import grouped_accuracy

    df = pd.DataFrame({"tier": ["a", "a", "a", "b"], "credit": [1.0, 0.25, 0.5, 0.0]})  # two questions tied
    table = grouped_accuracy(df, "tier", correct="credit")
    assert list(table["correct"]) == [1.75, 0.0] and table.loc[0, "accuracy"] == pytest.approx(1.75 / 3)
    low, high = wilson_interval(1.75, 3)
    assert (table.loc[0, "ci_low"], table.loc[0, "ci_high"]) == (low, high)
    assert wilson_interval(1, 3)[0] < low < wilson_interval(2, 3)[0]  # between its integer neighbours
