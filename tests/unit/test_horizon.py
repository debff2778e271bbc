"""The read horizon waits are measured on (streams.horizon)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.horizon import ReadHorizon, produced_ms

NOW = 1_800_000_000_000


def started(at: int = NOW) -> ReadHorizon:
    horizon = ReadHorizon(min_stretch_ms=1_000)
    assert horizon.tick(at) == 0  # a first tick after a start only begins a stretch
    return horizon


def test_caught_up_after_a_stretch_with_nothing_read() -> None:
    horizon = started()
    assert horizon.tick(NOW + 1_000) == NOW + 1_000


def test_a_backlog_holds_the_horizon_at_the_oldest_record_read() -> None:
    horizon = started()
    horizon.observe(NOW - 60_000)
    horizon.observe(NOW - 90_000)
    horizon.observe(NOW - 10_000)
    assert horizon.tick(NOW + 1_000) == NOW - 90_000
    horizon.observe(NOW - 70_000)
    assert horizon.tick(NOW + 2_000) == NOW - 70_000
    horizon.observe(NOW - 80_000)  # a partition further back: the horizon never goes back
    assert horizon.tick(NOW + 3_000) == NOW - 70_000
    assert horizon.tick(NOW + 4_000) == NOW + 4_000  # caught up


def test_records_read_before_the_first_tick_count_in_the_first_stretch() -> None:
    horizon = ReadHorizon()
    horizon.observe(NOW - 60_000)
    assert horizon.tick(NOW) == 0
    assert horizon.tick(NOW + 1_000) == NOW - 60_000


def test_a_tick_right_after_the_last_one_does_not_end_the_stretch() -> None:
    horizon = started()
    horizon.observe(NOW - 60_000)
    assert horizon.tick(NOW + 200) == 0  # the next part of a round, no caught up yet
    assert horizon.tick(NOW + 1_000) == NOW - 60_000


def test_never_ahead_of_the_wall_clock() -> None:
    horizon = started()
    horizon.observe(NOW + 5_000)  # a capture whose clock runs ahead
    assert horizon.tick(NOW + 1_000) == NOW + 1_000


def test_records_without_a_production_time_leave_the_stretch_as_it_is() -> None:
    horizon = started()
    horizon.observe(None)
    assert horizon.tick(NOW + 1_000) == NOW + 1_000


def test_produced_ms_reads_the_records_ts_ms() -> None:
    assert produced_ms({"ts_ms": 17, "source": {"ts_ms": 3}}) == 17
    assert produced_ms({"source": {"ts_ms": 3}}) is None
    assert produced_ms({"ts_ms": True}) is None


@given(
    st.lists(
        st.tuples(
            st.integers(0, 5_000),
            st.lists(st.one_of(st.none(), st.integers(NOW - 600_000, NOW + 600_000))),
        ),
        max_size=30,
    )
)
def test_the_horizon_never_goes_back_nor_passes_the_wall_clock(
    stretches: list[tuple[int, list[int | None]]],
) -> None:
    horizon = started()
    now, last = NOW, 0
    for advance, produced in stretches:
        for value in produced:
            horizon.observe(value)
        now += advance
        reached = horizon.tick(now)
        assert last <= reached <= now
        last = reached
