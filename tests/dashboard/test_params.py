"""The accepted-range checks of `dashboard.params` (pure functions of a catalogue entry)."""

from __future__ import annotations

import math

import pytest

from contract.api import ParamPublic
from dashboard.params import accepted, check_value, interval

EPOCHS = ParamPublic(name="epochs", kind="int", description="", minimum=1, maximum=1000)
LR = ParamPublic(
    name="lr", kind="float", description="", minimum=0, maximum=1, exclusive_minimum=True
)
WARMUP = ParamPublic(
    name="warmup", kind="float", description="", minimum=0, maximum=1, exclusive_maximum=True
)
K = ParamPublic(name="k", kind="int", description="", minimum=1)


def test_ranges_in_words_and_intervals():
    assert interval(EPOCHS) == "[1, 1000]" and accepted(EPOCHS) == "a whole number from 1 to 1000"
    assert interval(LR) == "(0, 1]"
    assert accepted(LR) == "a number greater than 0 and at most 1"
    assert interval(WARMUP) == "[0, 1)"
    assert accepted(WARMUP) == "a number at least 0 and less than 1"
    assert interval(K) == "[1, ∞)" and accepted(K) == "a whole number at least 1"
    unbounded = ParamPublic(name="x", kind="float", description="")
    assert interval(unbounded) == "" and accepted(unbounded) == "a number"


@pytest.mark.parametrize(
    ("param", "value", "problem"),
    [
        (EPOCHS, 1, None),
        (EPOCHS, 1000, None),
        (EPOCHS, 0, "epochs must be a whole number from 1 to 1000, got 0"),
        (EPOCHS, 1001, "epochs must be a whole number from 1 to 1000, got 1001"),
        (EPOCHS, 2.5, "epochs must be a whole number from 1 to 1000, got 2.5"),
        (EPOCHS, None, "epochs must be a whole number from 1 to 1000, got nothing"),
        (LR, 1.0, None),
        (LR, 1e-7, None),
        (LR, 0.0, "lr must be a number greater than 0 and at most 1, got 0"),
        (LR, -1.0, "lr must be a number greater than 0 and at most 1, got -1"),
        (LR, math.nan, "lr must be a number greater than 0 and at most 1, got nan"),
        (WARMUP, 0.0, None),
        (WARMUP, 1.0, "warmup must be a number at least 0 and less than 1, got 1"),
        (K, 10**6, None),
        (K, 0, "k must be a whole number at least 1, got 0"),
        (K, True, "k must be a whole number at least 1, got True"),
    ],
)
def test_check_value(param, value, problem):
    assert check_value(param, value) == problem
