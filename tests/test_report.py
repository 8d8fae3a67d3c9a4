"""`ttt-decode report` on synthetic records: the knee, the context table and plot, the constant-cost table."""

import pytest

from ttt_decode.bench import report


def _cells(*pairs):
    return {b: {"status": "ok", "decode_tokens_per_s": v} for b, v in pairs}


def test_knee_is_the_batch_past_which_a_doubling_adds_less_than_5_percent():
    assert report.KNEE_GAIN == 1.05
    # +7% per doubling is not a knee (the old 10% rule put one at 64), +4% is.
    assert report.knee(_cells((64, 1000), (128, 1070), (256, 1145)), "decode_tokens_per_s") is None
    assert report.knee(_cells((64, 1000), (128, 1070), (256, 1110)), "decode_tokens_per_s") == 128
    # 64 -> 256 is two doublings: +8% in all is +3.9% per doubling, a knee at 64 (8% alone would not be).
    assert report.knee(_cells((64, 1000), (256, 1080)), "decode_tokens_per_s") == 64
    # +12% over two doublings is +5.8% per doubling: no knee; 48 -> 64 (+3%) is +7.4% per doubling: none either.
    assert report.knee(_cells((64, 1000), (256, 1120)), "decode_tokens_per_s") is None
    assert report.knee(_cells((48, 1000), (64, 1030)), "decode_tokens_per_s") is None
    # Failed cells are left out; the gain is taken between the ok neighbours.
    cells = _cells((64, 1000), (256, 1080))
    cells[128] = {"status": "oom"}
    assert report.knee(cells, "decode_tokens_per_s") == 64
    assert report.gain_per_doubling(64, 1000, 256, 1210) == pytest.approx(1.10)
