"""The test helper's Mann-Whitney U test, against values worked out by hand."""

import math

import pytest

from tests.support import mann_whitney_p


def test_two_samples_apart():
    # U = 0; mean 12.5; variance 25 * 11 / 12; z = 12 / sqrt(22.9167) = 2.5067.
    p = mann_whitney_p([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert p == pytest.approx(math.erfc(12 / math.sqrt(25 * 11 / 12) / math.sqrt(2)))
    assert p == pytest.approx(0.01219, abs=1e-4)


def test_the_same_sample_twice_is_no_signal():
    sample = [0.5, 0.1, 0.3, 0.3, 0.9, 0.2]
    assert mann_whitney_p(sample, sample) == pytest.approx(1.0)


def test_ties_shrink_the_variance():
    # Ranks: the four 1s share 2.5, the four 2s share 6.5; U1 = 10 - 10 = 0, mean 8,
    # ties 2 * (64 - 4) = 120, variance 16 / 12 * (9 - 120 / 56).
    p = mann_whitney_p([1, 1, 1, 1], [2, 2, 2, 2])
    z = (8 - 0.5) / math.sqrt(16 / 12 * (9 - 120 / 56))
    assert p == pytest.approx(math.erfc(z / math.sqrt(2)))


def test_a_hundred_against_a_hundred_shifted():
    a = [i / 100 for i in range(100)]
    assert mann_whitney_p(a, [x + 0.5 for x in a]) < 1e-10
    assert mann_whitney_p(a, [x + 0.001 for x in a]) > 0.5
