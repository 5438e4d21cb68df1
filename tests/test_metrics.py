"""MMSA MetricsTop semantics, checked against numbers worked out by hand (see the comments)."""

import math

import numpy as np
import pytest
import torch

from sentistream.models.metrics import (
    MOSI_KEYS,
    SIMS_KEYS,
    regression_metrics,
    regression_metrics_mosei,
    regression_metrics_mosi,
    regression_metrics_sims,
)

# ---------------------------------------------------------------------------------------- MOSI
# true = [2.6, -1.4, 0.0, 0.4, -3.5, 1.5]
# pred = [1.4, -0.6, 0.3, -0.2, -2.9, 2.5]
#
# MAE: |1.2|+|0.8|+|0.3|+|0.6|+|0.6|+|1.0| = 4.5 -> 4.5 / 6 = 0.75
# Acc-7: clip(+-3) then np.round (half to even):
#   true -> [3, -1, 0, 0, -3, 2]  (1.5 -> 2, -3.5 clipped to -3)
#   pred -> [1, -1, 0, 0, -3, 2]  (2.5 -> 2, -0.2 -> -0 == 0)
#   equal at 5 of 6 -> 5/6
# Acc-5: clip(+-2): true -> [2, -1, 0, 0, -2, 2]; pred -> [1, -1, 0, 0, -2, 2] -> 5/6
# Has0 (>= 0): true [T F T T F T], pred [T F T F F T] -> acc 5/6
#   weighted F1 (weights = true support: T 4, F 2):
#     T: TP 3, FP 0, FN 1 -> P 1, R 3/4 -> F1 6/7
#     F: TP 2, FP 1, FN 0 -> P 2/3, R 1 -> F1 4/5
#     (4 * 6/7 + 2 * 4/5) / 6 = 88/105
#   (with the arguments swapped the supports would be 3/3 and F1 0.82857..., so order matters)
# Non0: drop the true 0 (index 2): true>0 [T F T F T], pred>0 [T F F F T] -> acc 4/5
#   T (support 3): TP 2, FP 0, FN 1 -> F1 4/5 ; F (support 2): TP 2, FP 1, FN 0 -> F1 4/5 -> 0.8
TRUE_A = [2.6, -1.4, 0.0, 0.4, -3.5, 1.5]
PRED_A = [1.4, -0.6, 0.3, -0.2, -2.9, 2.5]


def _pearson_by_hand(x, y):
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy)


def test_mosi_hand_computed():
    r = regression_metrics_mosi(PRED_A, TRUE_A)
    assert set(r) == set(MOSI_KEYS)
    assert r["mae"] == pytest.approx(0.75)
    assert r["acc7"] == pytest.approx(5 / 6)
    assert r["acc5"] == pytest.approx(5 / 6)
    assert r["acc2_has0"] == pytest.approx(5 / 6)
    assert r["f1_has0"] == pytest.approx(88 / 105)
    assert r["acc2_non0"] == pytest.approx(0.8)
    assert r["f1_non0"] == pytest.approx(0.8)
    assert r["corr"] == pytest.approx(_pearson_by_hand(PRED_A, TRUE_A))


def test_mosi_rounding_is_half_to_even():
    # np.round: 0.5 -> 0, -0.5 -> -0, 1.5 -> 2, -2.5 -> -2, 2.5 -> 2  => all equal to the truths.
    # (round-half-away-from-zero would give 1, -1, 2, -3, 3 -> 1/5.)
    pred = [0.5, -0.5, 1.5, -2.5, 2.5]
    true = [0.0, 0.0, 2.0, -2.0, 2.0]
    r = regression_metrics_mosi(pred, true)
    assert r["acc7"] == 1.0
    assert r["acc5"] == 1.0  # clip(+-2) leaves -2.5 -> -2, 2.5 -> 2
    # has0: true>=0 [T T T F T], pred>=0 [T F T F T] -> 4/5 ; non0 keeps 1.5/-2.5/2.5 -> all right
    assert r["acc2_has0"] == pytest.approx(0.8)
    assert r["acc2_non0"] == 1.0
    assert r["f1_non0"] == 1.0


def test_mosi_clipping_for_acc7_but_not_mae():
    # pred 4.0 vs true 3.0: clipped both to 3 -> Acc-7 correct; MAE stays |4 - 3| = 1 (unclipped)
    # pred -2.6 vs true -3.0: Acc-7 rounds -2.6 -> -3 == -3 -> correct; MAE 0.4
    # Acc-5: clip(+-2) -> 2 vs 2 and -2 vs -2 -> both correct
    r = regression_metrics_mosi([4.0, -2.6], [3.0, -3.0])
    assert r["acc7"] == 1.0 and r["acc5"] == 1.0
    assert r["mae"] == pytest.approx(0.7)
    # has0 / non0 all correct; Pearson of two points is +1
    assert r["acc2_has0"] == 1.0 and r["acc2_non0"] == 1.0
    assert r["corr"] == pytest.approx(1.0)


def test_mosi_zero_prediction_and_zero_truth():
    # truth 0 counts as non-negative in has0 and is dropped in non0;
    # prediction 0 counts as non-negative in has0 but as "not > 0" (negative) in non0.
    pred = [0.0, 0.0, 1.0, -1.0]
    true = [0.0, -1.0, 1.0, -1.0]
    r = regression_metrics_mosi(pred, true)
    # has0: true>=0 [T F T F], pred>=0 [T T T F] -> 3/4
    assert r["acc2_has0"] == pytest.approx(0.75)
    # non0 keeps indices 1..3: true>0 [F T F], pred>0 [F T F] -> 1.0
    assert r["acc2_non0"] == 1.0


def test_simple_pearson_and_inputs():
    # x = [1, 2, 3], y = [1, 3, 2]: deviations [-1, 0, 1] and [-1, 1, 0] -> 1 / sqrt(2 * 2) = 0.5
    r = regression_metrics_mosi(torch.tensor([[1.0], [3.0], [2.0]]), np.array([1.0, 2.0, 3.0]))
    assert r["corr"] == pytest.approx(0.5)
    assert regression_metrics_mosei([1.0, 3.0, 2.0], [1.0, 2.0, 3.0]) == r
    assert regression_metrics("MOSI", [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]) == r


def test_ndigits_and_edge_cases():
    r = regression_metrics_mosi(PRED_A, TRUE_A, ndigits=4)
    assert r["f1_has0"] == 0.8381  # 88/105 = 0.838095...
    assert r["acc7"] == 0.8333
    with pytest.raises(ValueError):
        regression_metrics_mosi([1.0], [1.0, 2.0])
    allzero = regression_metrics_mosi([0.5, -0.5], [0.0, 0.0])
    assert math.isnan(allzero["acc2_non0"]) and math.isnan(allzero["f1_non0"])
    with pytest.raises(ValueError):
        regression_metrics("iemocap", [1.0], [1.0])


# ---------------------------------------------------------------------------------------- SIMS
# true = [-0.8, -0.2, 0.0, 0.05, 0.4, 1.0, -1.2]  -> clipped [-0.8, -0.2, 0, 0.05, 0.4, 1.0, -1.0]
# pred = [-0.6, -0.1, 0.2, -0.05, 0.8, 1.3, -0.9] -> clipped [-0.6, -0.1, 0.2, -0.05, 0.8, 1.0, -0.9]
# Acc-2 bins [-1, 0] -> 0, (0, 1] -> 1:
#   true [0 0 0 1 1 1 0], pred [0 0 1 0 1 1 0] -> 5/7
# Acc-3 bins [-1, -0.1], (-0.1, 0.1], (0.1, 1]:
#   true [0 0 1 1 2 2 0], pred [0 0 2 1 2 2 0] (-0.1 is in the first, right-closed bin) -> 6/7
# Acc-5 bins [-1, -0.7], (-0.7, -0.1], (-0.1, 0.1], (0.1, 0.7], (0.7, 1]:
#   true [0 1 2 2 3 4 0], pred [1 1 3 2 4 4 0] -> 4/7
# F1 (2 bins, weighted by true support 4 / 3):
#   class 0: TP 3, FP 1, FN 1 -> 3/4 ; class 1: TP 2, FP 1, FN 1 -> 2/3 ; (4*3/4 + 3*2/3)/7 = 5/7
# MAE on clipped values: .2+.1+.2+.1+.4+0+.1 = 1.1 -> 1.1/7 (unclipped it would be 1.6/7)
TRUE_S = [-0.8, -0.2, 0.0, 0.05, 0.4, 1.0, -1.2]
PRED_S = [-0.6, -0.1, 0.2, -0.05, 0.8, 1.3, -0.9]


def test_sims_hand_computed():
    r = regression_metrics_sims(PRED_S, TRUE_S)
    assert set(r) == set(SIMS_KEYS)
    assert r["acc2"] == pytest.approx(5 / 7)
    assert r["acc3"] == pytest.approx(6 / 7)
    assert r["acc5"] == pytest.approx(4 / 7)
    assert r["f1"] == pytest.approx(5 / 7)
    assert r["mae"] == pytest.approx(1.1 / 7)
    clipped_t = [-0.8, -0.2, 0.0, 0.05, 0.4, 1.0, -1.0]
    clipped_p = [-0.6, -0.1, 0.2, -0.05, 0.8, 1.0, -0.9]
    assert r["corr"] == pytest.approx(_pearson_by_hand(clipped_p, clipped_t))
    assert regression_metrics("simsv2", PRED_S, TRUE_S) == r


def test_sims_float32_edges_follow_mmsa():
    # MMSA bins the float32 numpy view of its tensors, comparing against the edges in float32:
    # 0.1f is *on* the edge (-0.1, 0.1] -> class "neutral"; -0.7f is on [-1, -0.7] -> "very negative".
    # (Promoted to float64, 0.1f = 0.10000000149 and -0.7f = -0.69999998807 would change bins.)
    pred = torch.tensor([0.1, -0.7], dtype=torch.float32)
    true = torch.tensor([0.0, -0.8], dtype=torch.float32)
    r = regression_metrics_sims(pred, true)
    assert r["acc3"] == 1.0  # pred bins [1, 0], true bins [1, 0]
    assert r["acc5"] == 1.0  # pred bins [2, 0], true bins [2, 0]
