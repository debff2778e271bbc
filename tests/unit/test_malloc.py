"""The malloc arena cap: set on glibc, left alone when told to or when it cannot apply."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from erpcrm.malloc import M_ARENA_MAX, Mallopt, glibc_mallopt, limit_arenas
from streams.settings import StreamsSettings


class _Recorder:
    """A stand-in for glibc's ``mallopt`` that records its calls."""

    def __init__(self, result: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.result = result

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.result

    def finder(self) -> Mallopt:
        return self


def test_the_cap_is_set_through_mallopt() -> None:
    mallopt = _Recorder()
    assert limit_arenas(2, environ={}, mallopt=mallopt.finder)
    assert mallopt.calls == [(M_ARENA_MAX, 2)]


@pytest.mark.parametrize(
    ("arenas", "environ"),
    [(0, {}), (2, {"MALLOC_ARENA_MAX": "4"})],
    ids=["zero keeps glibc's default", "MALLOC_ARENA_MAX wins"],
)
def test_the_cap_is_left_alone(arenas: int, environ: dict[str, str]) -> None:
    mallopt = _Recorder()
    assert not limit_arenas(arenas, environ=environ, mallopt=mallopt.finder)
    assert mallopt.calls == []


def test_nothing_happens_without_glibc() -> None:
    assert not limit_arenas(2, environ={}, mallopt=lambda: None)


def test_a_refusal_is_reported_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    mallopt = _Recorder(result=0)
    assert not limit_arenas(2, environ={}, mallopt=mallopt.finder)
    assert "refused" in caplog.text


def test_glibc_is_found_on_glibc_only() -> None:
    try:
        os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        assert glibc_mallopt() is None
        return
    found = glibc_mallopt()
    assert found is not None
    assert found(M_ARENA_MAX, 8 * (os.cpu_count() or 1)) == 1  # the real call: the default


def test_every_worker_reads_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ERPCRM_CONFIG", raising=False)
    monkeypatch.delenv("ERPCRM_MALLOC_ARENAS", raising=False)
    assert StreamsSettings().malloc_arenas == 2
    monkeypatch.setenv("ERPCRM_MALLOC_ARENAS", "0")
    assert StreamsSettings().malloc_arenas == 0
    monkeypatch.setenv("ERPCRM_MALLOC_ARENAS", "-1")
    with pytest.raises(ValidationError):
        StreamsSettings()
