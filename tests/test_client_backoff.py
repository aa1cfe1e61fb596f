"""ExponentialRandomBackoff follows the seed's documented arithmetic (protocols/katcp.md 2.7)."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from katclient.client.backoff import ExponentialRandomBackoff
from katclient.errors import InvalidUsage


@given(
    initial=st.floats(0.0, 100.0),
    extra=st.floats(0.0, 1000.0),
    exp_fac=st.floats(1.01, 10.0),
    randomicity=st.floats(0.0, 1.0),
    draws=st.lists(st.floats(0.0, 0.999999), min_size=12, max_size=12),
)
def test_delay_is_uniform_in_the_documented_interval(initial, extra, exp_fac, randomicity, draws):
    it = iter(draws)
    b = ExponentialRandomBackoff(initial, initial + extra, exp_fac, randomicity, rand=lambda: next(it))
    base = initial
    for _ in range(10):
        lo = (1 - randomicity) * base
        assert min(lo, b.delay_max) - 1e-9 <= b.delay <= min(max(base, lo), b.delay_max) + 1e-9
        b.failed()
        base = min(base * exp_fac, initial + extra)
        assert b.base == pytest.approx(base)


def test_seed_defaults_give_the_documented_ranges():
    values = itertools.cycle([0.0, 0.999999])
    b = ExponentialRandomBackoff(5, 90, 3, 0.95, rand=lambda: next(values))
    ranges = []
    for _ in range(5):
        ranges.append(b.delay)
        b.failed()
    # [0.25, 5), [0.75, 15), [2.25, 45), then [4.5, 90)
    assert ranges[0] == pytest.approx(0.25)
    assert ranges[1] == pytest.approx(15, rel=1e-5)
    assert ranges[2] == pytest.approx(2.25)
    assert ranges[3] == pytest.approx(90, rel=1e-5)
    assert ranges[4] == pytest.approx(4.5)
    b.success()
    assert b.base == 5


@pytest.mark.parametrize(
    "args", [(-1, 10, 2, 0.5), (10, 5, 2, 0.5), (1, 10, 1, 0.5), (1, 10, 2, 1.5), (1, 10, 2, -0.1)]
)
def test_bad_parameters_are_refused(args):
    with pytest.raises(InvalidUsage):
        ExponentialRandomBackoff(*args)
