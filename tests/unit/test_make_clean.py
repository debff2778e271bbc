"""``make clean``: every piece of local state goes, the jar cache and set-up stamps stay.

The recipe is read with ``make -n`` (nothing runs) and its script is run against a
throw-away state directory laid out like ``.local`` after ``make demo``.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from erpcrm.stack.layout import StackLayout, repo_root
from streams.settings import DEFAULT_DATA_DIR

REPO = repo_root()
SCRIPT = REPO / "deploy" / "clean-state.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("make") is None or shutil.which("bash") is None, reason="needs make and bash"
)


def make(*args: str) -> str:
    result = subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def make_variables() -> dict[str, str]:
    """The Makefile's simply expanded variables (``make -pn``: print, run nothing)."""
    found: dict[str, str] = {}
    for line in make("-pn", "clean").splitlines():
        name, sep, value = line.partition(" := ")
        if sep and name.isidentifier():
            found[name] = value
    return found


def clean_script_args() -> list[str]:
    """The arguments ``make clean`` passes to ``deploy/clean-state.sh``."""
    calls = [
        shlex.split(line)
        for line in make("-n", "clean").splitlines()
        if "deploy/clean-state.sh" in line
    ]
    assert len(calls) == 1, calls
    call = calls[0]
    return call[call.index("deploy/clean-state.sh") + 1 :]


def test_the_recipe_stops_the_stack_then_cleans_all_of_dot_local_but_cache_and_stamps() -> None:
    lines = make("-n", "clean").splitlines()
    assert lines[0].endswith("erpcrm stack down")
    assert clean_script_args() == [".local", "cache", "stamps"]


def test_what_it_keeps_is_where_setup_keeps_jars_and_stamps() -> None:
    variables = make_variables()
    state, kept = variables["STATE"], clean_script_args()[1:]
    for name in ("JARS", "STAMP"):
        relative = Path(variables[name]).relative_to(state)
        assert relative.parts[0] in kept, (name, variables[name])


def test_the_stack_and_the_workers_keep_their_state_in_the_cleaned_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The streams worker's table stores must go with Kafka's data: a fresh Kafka would
    # leave them ahead of their changelogs.
    monkeypatch.delenv("ERPCRM_STACK_DIR", raising=False)
    cleaned = REPO / clean_script_args()[0]
    assert StackLayout.default().state == cleaned
    assert DEFAULT_DATA_DIR.is_relative_to(cleaned)


def populate(state: Path) -> None:
    """A state directory as ``make demo`` leaves it (names as erpcrm creates them)."""
    files = [
        "cache/jars/kafka-4.1.1/kafka.jar",
        "stamps/venv",
        "stamps/jars",
        "kafka/data/meta.properties",
        "kafka/cluster.id",
        "registry/registry.log",
        "prometheus/data/wal/000001",
        "secrets/pgpass",
        "streams/erpcrm-streams/v1/tables/assembly-0.db/CURRENT",
        "demo/streams.log",
        "logs/streams.log",
        "bench/streams-1-worker.log",
        ".hidden",
    ]
    for name in files:
        path = state / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")


def test_the_script_removes_everything_but_the_kept_entries(tmp_path: Path) -> None:
    state = tmp_path / ".local"
    populate(state)
    subprocess.run(["bash", str(SCRIPT), str(state), "cache", "stamps"], check=True)
    assert sorted(p.name for p in state.iterdir()) == ["cache", "stamps"]
    assert (state / "cache/jars/kafka-4.1.1/kafka.jar").read_text() == "x"
    assert sorted(p.name for p in (state / "stamps").iterdir()) == ["jars", "venv"]


def test_links_to_service_directories_go_with_their_data_other_links_only_as_links(
    tmp_path: Path,
) -> None:
    # As erpcrm/stack/process.py links a PostgreSQL cluster the service user cannot reach
    # in the checkout: <elsewhere>/pg-erp-<12 hex digits>.
    state, service, mine = tmp_path / ".local", tmp_path / "service", tmp_path / "mine"
    cluster = service / "pg-erp-0123456789ab"
    (cluster / "data").mkdir(parents=True)
    (mine / "kafka").mkdir(parents=True)
    state.mkdir()
    (state / "pg-erp").symlink_to(cluster)
    (state / "kafka").symlink_to(mine / "kafka")
    subprocess.run(["bash", str(SCRIPT), str(state)], check=True, capture_output=True)
    assert list(state.iterdir()) == []
    assert not cluster.exists()
    assert (mine / "kafka").is_dir()


def test_a_missing_state_directory_is_clean_already(tmp_path: Path) -> None:
    subprocess.run(["bash", str(SCRIPT), str(tmp_path / "nothing")], check=True)
    assert not (tmp_path / "nothing").exists()
