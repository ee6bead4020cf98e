"""What an agent says about its machine: labels, settings, health from /proc, CLI versions, and
the sub-folders a directory job lists (on real folders in tmp_path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.errors import SettingsError
from core.names import parse_labels
from core.settings import Settings
from machine_agent.directories import list_directory
from machine_agent.health import read_health
from machine_agent.paths import real_roots
from machine_agent.probe import parse_version


def test_labels_parse_to_a_dict() -> None:
    assert parse_labels(["gpu=a100", "zone=eu-west/1", "os.release=24.04", "owner=me@x"]) == {
        "gpu": "a100",
        "zone": "eu-west/1",
        "os.release": "24.04",
        "owner": "me@x",
    }
    assert parse_labels([]) == {}


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["gpu"], "label 'gpu' must be key=value"),
        (["=a100"], "label key '' must match"),
        (["-gpu=a"], "label key '-gpu' must match"),
        (["gpu="], "label gpu: value '' must match"),
        (["gpu=a 100"], "label gpu: value 'a 100' must match"),
        (["gpu=a,b"], "label gpu: value 'a,b' must match"),
        (["gpu=a", "gpu=b"], "label gpu is given twice"),
        ([f"k{i}=v" for i in range(33)], "at most 32 labels, not 33"),
    ],
)
def test_bad_labels_say_what_is_wrong(labels: list[str], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        parse_labels(labels)


def test_labels_session_limit_and_probe_interval_from_the_environment() -> None:
    s = Settings.from_env(
        {
            "MACHINE_HUB_LABELS": "gpu=a100, zone=eu",
            "MACHINE_HUB_MAX_SESSIONS": "3",
            "MACHINE_HUB_CLI_PROBE_INTERVAL_S": "60",
        }
    )
    assert (s.labels, s.max_sessions, s.cli_probe_interval_s) == (("gpu=a100", "zone=eu"), 3, 60.0)
    assert Settings.from_env(s.to_env()) == s
    assert Settings().max_sessions == 0 and Settings().labels == ()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MACHINE_HUB_LABELS": "gpu"}, "labels: label 'gpu' must be key=value"),
        ({"MACHINE_HUB_MAX_SESSIONS": "-1"}, "max_sessions must not be negative"),
        ({"MACHINE_HUB_MAX_SESSIONS": "many"}, "invalid configuration"),
        ({"MACHINE_HUB_CLI_PROBE_INTERVAL_S": "0"}, "cli_probe_interval_s must be positive"),
    ],
)
def test_bad_fleet_settings_stop_the_process_with_a_message(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_health_from_proc(tmp_path: Path) -> None:
    (tmp_path / "meminfo").write_text("MemTotal:       16000000 kB\nMemFree: 1 kB\nMemAvailable:    4000000 kB\n")
    (tmp_path / "uptime").write_text("12345.67 23456.78\n")
    health = read_health(tmp_path)
    assert health.cores == os.cpu_count()
    assert (health.memory_total_bytes, health.memory_used_bytes) == (16_000_000 * 1024, 12_000_000 * 1024)
    assert health.uptime_seconds == 12345
    assert health.load1 is not None and health.load1 >= 0


def test_health_without_proc_says_none_rather_than_guessing(tmp_path: Path) -> None:
    health = read_health(tmp_path / "missing")
    assert health.uptime_seconds is None and health.memory_used_bytes is None
    assert health.memory_total_bytes == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@pytest.mark.parametrize(
    ("output", "version"),
    [
        (b"1.0.3 (Claude Code)\n", "1.0.3"),
        (b"codex-cli 0.20.0\n", "0.20.0"),
        (b"gemini v0.1.15-nightly.20250801\n", "0.1.15-nightly.20250801"),
        (b"opencode 0.3.58+build.7", "0.3.58+build.7"),
        (b"\n\n  cursor-agent 2025.08.09-abc\n", "2025.08.09-abc"),
        (b"dev build\n", "dev build"),
        (b"x" * 200, "x" * 64),
        (b"", None),
        (b"  \n", None),
    ],
)
def test_versions_are_read_from_what_a_cli_prints(output: bytes, version: str | None) -> None:
    assert parse_version(output) == version


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for name in ("b", "A", "c", ".git", "deep/er"):
        (root / name).mkdir(parents=True)
    (root / "file").write_text("x")
    (tmp_path / "out").mkdir()
    (root / "in-link").symlink_to(root / "deep")
    (root / "out-link").symlink_to(tmp_path / "out")
    (root / "file-link").symlink_to(root / "file")
    (root / "loop").symlink_to(root / "loop")
    return root


def names(result: object) -> list[str]:
    return [e.name for e in result.entries]  # type: ignore[attr-defined]


def test_sub_folders_sorted_by_name_links_into_the_roots_only(tree: Path) -> None:
    roots = real_roots([str(tree)], "/")
    listed = list_directory(str(tree), hidden=False, home="/", roots=roots)
    assert (listed.code, listed.path, listed.truncated) == (None, str(tree), False)
    assert names(listed) == ["A", "b", "c", "deep", "in-link"]
    assert [e.symlink for e in listed.entries] == [False, False, False, False, True]
    assert names(list_directory(str(tree), hidden=True, home="/", roots=roots))[0] == ".git"
    # Without roots the whole machine is open, so the link out is a folder like any other.
    assert "out-link" in names(list_directory(str(tree), hidden=False, home="/", roots=()))


def test_the_listing_is_capped(tree: Path) -> None:
    listed = list_directory(str(tree), hidden=True, home="/", roots=(), limit=2)
    assert names(listed) == [".git", "A"] and listed.truncated is True


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("out-link", "directory_outside_roots"),
        ("../out", "directory_outside_roots"),
        ("missing", "directory_not_found"),
        ("file", "not_a_directory"),
        ("loop", "directory_unreadable"),
    ],
)
def test_a_folder_that_cannot_be_listed_has_a_code(tree: Path, path: str, code: str) -> None:
    # Relative paths start at the home, as path checks take them.
    listed = list_directory(path, hidden=False, home=str(tree), roots=real_roots([str(tree)], str(tree)))
    assert listed.code == code and listed.error and listed.entries == []


def test_home_and_relative_paths(tree: Path) -> None:
    assert list_directory("~", hidden=False, home=str(tree), roots=()).path == str(tree)
    assert list_directory("~/deep", hidden=False, home=str(tree), roots=()).path == str(tree / "deep")
    assert names(list_directory("deep", hidden=False, home=str(tree), roots=())) == ["er"]
