from __future__ import annotations

from airflow_curator.core.stats import Stats, per_second


def test_one_shape_for_every_result():
    stats = Stats()
    stats.update(records=10, bytes=3_000_000)
    stats.update(records=5)
    r = stats.result(shards=2, per_shard=[])
    assert r["records"] == 15 and r["bytes"] == 3_000_000 and r["shards"] == 2
    assert r["seconds"] >= 0
    assert r["records_per_s"] > 0 and r["mb_per_s"] > 0
    assert per_second(3, 2) == 1.5
    assert "records_per_s" not in Stats().result(records=None)  # unknown counts get no rate
