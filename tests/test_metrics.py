"""Metrics on hand-built cases with known answers."""

import numpy as np
import pytest

from unetseg import metrics


def two_nuclei():
    true = np.zeros((10, 10), np.int32)
    true[0:2, 0:5] = 1  # A: 10 px
    true[6:8, 6:8] = 2  # B: 4 px
    pred = np.zeros_like(true)
    pred[0:2, 0:3] = 7  # overlaps A on 6 px: IoU 6/10 = 0.6; B is missed
    return true, pred


def test_semantic():
    true, pred = two_nuclei()
    assert metrics.dice(pred > 0, true > 0) == pytest.approx(2 * 6 / (6 + 14))
    assert metrics.iou(pred > 0, true > 0) == pytest.approx(6 / 14)
    assert metrics.pixel_accuracy(pred > 0, true > 0) == pytest.approx(92 / 100)
    empty = np.zeros((3, 3))
    assert metrics.dice(empty, empty) == metrics.iou(empty, empty) == 1.0


def test_overlap_and_iou():
    true, pred = two_nuclei()
    o = metrics.overlap(true, pred)
    np.testing.assert_array_equal(o.intersection, [[6], [0]])
    np.testing.assert_array_equal(o.true_area, [10, 4])
    np.testing.assert_array_equal(o.pred_area, [6])
    np.testing.assert_allclose(o.iou, [[0.6], [0.0]])


def test_dsb_score_known_answer():
    true, pred = two_nuclei()
    # IoU 0.6 matches at thresholds 0.50 and 0.55 (TP 1, FP 0, FN 1: 1/2), nowhere else (TP 0, FP 1, FN 2: 0)
    assert metrics.dsb_score(true, pred) == pytest.approx((0.5 + 0.5) / 10)
    assert metrics.dsb_score(true, true) == 1.0
    assert metrics.dsb_score(true, np.zeros_like(true)) == 0.0
    assert metrics.dsb_score(np.zeros_like(true), np.zeros_like(true)) == 1.0


def test_aji_and_pq_known_answers():
    true, pred = two_nuclei()
    assert metrics.aji(true, pred) == pytest.approx(6 / (10 + 4))
    assert metrics.panoptic_quality(true, pred) == pytest.approx(0.6 / (1 + 0 + 0.5))
    assert metrics.aji(true, true) == metrics.panoptic_quality(true, true) == 1.0
    extra = pred.copy()
    extra[9, 0] = 3  # an unmatched prediction adds its area to AJI's union and a FP to PQ
    assert metrics.aji(true, extra) == pytest.approx(6 / 15)
    assert metrics.panoptic_quality(true, extra) == pytest.approx(0.6 / (1 + 0.5 + 0.5))


def test_merged_touching_nuclei_fail_every_threshold():
    true = np.zeros((4, 8), np.int32)
    true[:, :4], true[:, 4:] = 1, 2
    merged = (true > 0).astype(np.int32)  # one object over two nuclei: IoU 0.5 each, not > 0.5
    assert metrics.dsb_score(true, merged) == 0.0
    row = metrics.image_metrics(true, merged)
    assert row["count_error"] == 1
    assert (row["merged"], row["missed"]) == (2, 0)


def test_merged_and_missed_known_answers():
    true, pred = two_nuclei()
    assert metrics.merged_and_missed(metrics.overlap(true, pred)) == (0, 1)  # A found, B missed
    split = true.copy()
    split[0:2, 3:5] = 3  # A cut into 6 + 4 px: the 6 px part holds more than half of it
    assert metrics.merged_and_missed(metrics.overlap(true, split)) == (0, 0)
    split[0:2, 2] = 3  # now 4 + 6: still one part holds at least half
    assert metrics.merged_and_missed(metrics.overlap(true, split)) == (0, 0)
    thirds = true.copy()
    thirds[0:2, 2:4], thirds[0:2, 4] = 3, 4  # 4 + 4 + 2 px: no part holds half of A
    assert metrics.merged_and_missed(metrics.overlap(true, thirds)) == (0, 1)
    blob = np.zeros_like(true)
    blob[0:8, 0:8] = 1  # holds all of A and of B
    assert metrics.merged_and_missed(metrics.overlap(true, blob)) == (2, 0)
    assert metrics.merged_and_missed(metrics.overlap(true, np.zeros_like(true))) == (0, 2)
    assert metrics.merged_and_missed(metrics.overlap(np.zeros_like(true), pred)) == (0, 0)


def test_summary_pools_ap_over_images():
    true, pred = two_nuclei()
    rows = [metrics.image_metrics(true, pred), metrics.image_metrics(true, true)]
    s = metrics.summarise(rows)
    assert s["ap@0.50"] == pytest.approx((1 + 2) / (1 + 2 + 0 + 1))  # TP 3, FP 0, FN 1
    assert s["ap@0.90"] == pytest.approx(2 / (2 + 1 + 2))
    assert s["dsb_score"] == pytest.approx((0.1 + 1) / 2)
    assert s["count_error"] == 0.5 and s["images"] == 2
    assert (s["merged"], s["missed"]) == (0.0, pytest.approx(1 / 4))  # B missed in one image of two
    with pytest.raises(ValueError, match="no images"):
        metrics.summarise([])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"\(3, 3\) and predicted labels \(3, 4\)"):
        metrics.overlap(np.zeros((3, 3), int), np.zeros((3, 4), int))
