"""How batched etcd writes are split: by operation count and by bytes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fleetd.registry.etcd import MAX_TXN_BYTES, MAX_TXN_OPS, chunks


def test_many_small_operations_split_by_count() -> None:
    runs = chunks([10] * 300)
    assert [len(r) for r in runs] == [MAX_TXN_OPS, MAX_TXN_OPS, 300 - 2 * MAX_TXN_OPS]


def test_large_operations_split_by_bytes() -> None:
    # two 600 KiB units fit no single transaction of 1 MiB
    runs = chunks([600 * 1024, 600 * 1024, 10])
    assert [list(r) for r in runs] == [[0], [1, 2]]


def test_an_operation_bigger_than_the_limit_goes_alone() -> None:
    runs = chunks([10, 2 * MAX_TXN_BYTES, 10])
    assert [list(r) for r in runs] == [[0], [1], [2]]


@given(st.lists(st.integers(min_value=1, max_value=2 * MAX_TXN_BYTES), max_size=400), st.integers(1, 128))
def test_runs_cover_everything_in_order_within_limits(sizes: list[int], max_ops: int) -> None:
    runs = chunks(sizes, max_ops=max_ops)
    assert [i for r in runs for i in r] == list(range(len(sizes)))
    for run in runs:
        assert 1 <= len(run) <= max_ops
        assert len(run) == 1 or sum(sizes[i] for i in run) <= MAX_TXN_BYTES
