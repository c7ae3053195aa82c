"""Golden tests of the exact negative-binomial tail shared by the publish-time scorer
(:func:`app.engine.scores.nb_upper_p`): small cases whose numbers can be checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from app.engine.scores import nb_upper_p


def test_poisson_tail_by_hand() -> None:
    # P(X >= 5 | Poisson(1)) = 1 - e^-1 (1 + 1 + 1/2 + 1/6 + 1/24)
    expected = 1 - np.exp(-1) * (1 + 1 + 1 / 2 + 1 / 6 + 1 / 24)
    assert nb_upper_p(np.array([5.0]), np.array([1.0]), np.array([1.0]))[0] == pytest.approx(expected, rel=1e-12)


def test_negative_binomial_tail_by_hand() -> None:
    # mean 2, variance 4 -> size r = 2^2 / (4 - 2) = 2, p = 1/2: P(k) = (k + 1) / 2^(k + 2);
    # P(X >= 3) = 1 - (1/4 + 2/8 + 3/16) = 5/16
    assert nb_upper_p(np.array([3.0]), np.array([2.0]), np.array([4.0]))[0] == pytest.approx(5 / 16, rel=1e-12)


def test_zero_observed_has_p_one() -> None:
    assert nb_upper_p(np.array([0.0, 0.0]), np.array([3.0, 3.0]), np.array([3.0, 9.0])).tolist() == [1.0, 1.0]


def test_over_dispersion_widens_the_tail() -> None:
    x, mean = np.array([8.0, 8.0]), np.array([3.0, 3.0])
    poisson, wide = nb_upper_p(x, mean, np.array([3.0, 9.0]))
    assert poisson < wide < 1


def test_scipy_agrees_with_the_poisson_limit_of_the_nb_tail() -> None:
    x = np.array([7.0])
    near_poisson = nb_upper_p(x, np.array([2.0]), np.array([2.0 + 1e-6]))[0]
    assert near_poisson == pytest.approx(stats.poisson.sf(6, 2.0), rel=1e-4)
