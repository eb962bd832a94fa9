"""Property test: no figure labelled a guarantee is ever below the PLD lower bound (the
optimistic PLD estimate, i.e. the PLD value minus its discretisation error)."""

from __future__ import annotations

import pytest

pytest.importorskip("dp_accounting")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bastion.privacy.accountants import GUARANTEE, PrivacyLedger  # noqa: E402

CASES: list[tuple[float, float, int, float]] = []


@settings(max_examples=50, deadline=None, derandomize=True)
@given(log_q=st.floats(-3.0, -0.5), sigma=st.floats(0.6, 8.0), steps=st.integers(1, 200),
       log_delta=st.floats(-8.0, -3.0))
def test_no_guarantee_below_pld_lower_bound(log_q: float, sigma: float, steps: int,
                                            log_delta: float) -> None:
    q, delta = 10 ** log_q, 10 ** log_delta
    CASES.append((q, sigma, steps, delta))
    led = PrivacyLedger(pld_interval=1e-3)   # coarser grid: a weaker lower bound, 10x faster
    led.step(q, sigma, steps)
    figs = led.figures(delta)
    pld = figs["pld"]
    assert pld.epsilon is not None and pld.lower is not None
    floor = pld.lower - 1e-9
    for name, fig in figs.items():
        if fig.kind == GUARANTEE and fig.epsilon is not None:
            assert fig.epsilon >= floor, (name, q, sigma, steps, delta, fig.epsilon, pld.lower)
    head = led.headline(delta, figs)
    assert head.kind == GUARANTEE and head.epsilon >= floor


def test_property_ran_its_cases() -> None:
    """The property above ran (runs after it in file order); its case count is reported."""
    if CASES:
        assert len(CASES) >= 50
