"""The thread plan: a function of cores, model FLOPs and batch size, never of a timing."""

from __future__ import annotations

import os

import pytest

from airflow_curator.core.annotate.threads import (
    DECODE_FLOPS,
    _cgroup_quota,
    cpu_cores,
    plan_threads,
)

TINY = 1.4e6  # the 768-d test model: image and text tower FLOPs per image
VIT_B_32 = 11.7e9


def test_a_model_cheaper_than_decoding_leaves_the_cores_to_the_decoder():
    for cores in (1, 2, 16, 64):
        plan = plan_threads("cpu", cores, TINY, 64)
        assert (plan.torch_threads, plan.decode_threads) == (1, cores)


def test_a_model_dearer_than_decoding_gets_the_cores():
    plan = plan_threads("cpu", 2, VIT_B_32, 64)
    assert (plan.torch_threads, plan.decode_threads) == (2, 1)
    plan = plan_threads("cpu", 16, VIT_B_32, 64)
    assert (plan.torch_threads, plan.decode_threads) == (16, 1)


def test_cores_are_shared_in_proportion_to_work_per_image():
    plan = plan_threads("cpu", 16, DECODE_FLOPS, 256)  # as costly as decoding: half each
    assert (plan.torch_threads, plan.decode_threads) == (8, 9)
    assert "50% of 16 cores" in plan.reason


def test_a_small_batch_caps_torch_threads():
    assert plan_threads("cpu", 16, VIT_B_32, 1).torch_threads == 11  # 11.7 GFLOPs of work
    assert plan_threads("cpu", 16, 200e6, 4).torch_threads == 1  # 0.8 GFLOPs: one thread


def test_explicit_counts_win_and_say_so():
    plan = plan_threads("cpu", 2, TINY, 64, torch_threads=2, decode_threads=5)
    assert (plan.torch_threads, plan.decode_threads, plan.reason) == (2, 5, "set by the caller")


def test_gpu_plan():
    plan = plan_threads("cuda", 32, 0, 256)
    assert (plan.torch_threads, plan.decode_threads) == (32, 8)


def test_metadata_holds_what_the_values_depend_on():
    meta = plan_threads("cpu", 2, TINY, 64).metadata()
    assert meta == {
        "device": "cpu",
        "cores": 2,
        "torch_threads": 1,
        "batch_size": 64,
        "model_flops": 1400000,
        "reason": meta["reason"],
    }


def test_cores_follow_affinity_and_cgroup_quota(tmp_path):
    assert 1 <= cpu_cores() <= len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert _cgroup_quota(str(tmp_path)) == 3
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_quota(str(tmp_path)) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_quota(str(tmp_path)) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cgroup_quota(str(tmp_path)) is None


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_cores_shrink_with_the_affinity_mask():
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(mask)})  # this thread only
    try:
        assert cpu_cores() == 1
    finally:
        os.sched_setaffinity(0, mask)
