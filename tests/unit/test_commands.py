"""The argv of every agent CLI, with and without yolo and model, and command overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.schemas import AgentName
from machine_agent.commands import build_argv, resolve_executable

SID = "0b6c2f3e-52a4-4d1b-9a53-8c1f8a5e7d10"

PLAIN: dict[AgentName, list[str]] = {
    "claude": ["claude", "--session-id", SID],
    "codex": ["codex"],
    "cursor": ["cursor-agent"],
    "gemini": ["gemini"],
    "opencode": ["opencode"],
}
YOLO: dict[AgentName, list[str]] = {
    "claude": ["claude", "--dangerously-skip-permissions", "--session-id", SID],
    "codex": ["codex", "--dangerously-bypass-approvals-and-sandbox"],
    "cursor": ["cursor-agent", "--force"],
    "gemini": ["gemini", "--yolo"],
    "opencode": ["opencode"],
}


@pytest.mark.parametrize("agent", list(PLAIN))
def test_plain(agent: AgentName) -> None:
    assert build_argv(agent, yolo=False, model=None, session_id=SID, overrides={}) == PLAIN[agent]


@pytest.mark.parametrize("agent", list(YOLO))
def test_yolo(agent: AgentName) -> None:
    assert build_argv(agent, yolo=True, model=None, session_id=SID, overrides={}) == YOLO[agent]


@pytest.mark.parametrize("agent", list(YOLO))
def test_model_is_two_arguments_at_the_end(agent: AgentName) -> None:
    argv = build_argv(agent, yolo=True, model="some model; rm -rf /", session_id=SID, overrides={})
    assert argv == [*YOLO[agent], "--model", "some model; rm -rf /"]


@pytest.mark.parametrize("model", [None, "", "   "])
def test_empty_model_adds_nothing(model: str | None) -> None:
    assert build_argv("gemini", yolo=False, model=model, session_id=SID, overrides={}) == ["gemini"]


def test_override_replaces_the_base_command_only() -> None:
    overrides = {"claude": ["/opt/x/claude", "--foo"], "codex": ["/usr/local/bin/codex"]}
    assert build_argv("claude", yolo=True, model="opus", session_id=SID, overrides=overrides) == [
        "/opt/x/claude",
        "--foo",
        "--dangerously-skip-permissions",
        "--session-id",
        SID,
        "--model",
        "opus",
    ]
    assert build_argv("codex", yolo=False, model=None, session_id=SID, overrides=overrides) == ["/usr/local/bin/codex"]
    # Other agents keep their defaults.
    assert build_argv("gemini", yolo=True, model=None, session_id=SID, overrides=overrides) == ["gemini", "--yolo"]


def test_empty_override_is_ignored() -> None:
    assert build_argv("codex", yolo=False, model=None, session_id=SID, overrides={"codex": []}) == ["codex"]


def test_override_is_not_mutated() -> None:
    override = ["/opt/cursor-agent"]
    build_argv("cursor", yolo=True, model="m", session_id=SID, overrides={"cursor": override})
    assert override == ["/opt/cursor-agent"]


def _executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_resolve_uses_the_given_path(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    tool = _executable(second / "claude")
    env = {"PATH": os.pathsep.join([str(first), str(second)])}
    assert resolve_executable("claude", env) == str(tool)
    assert resolve_executable("claude", {"PATH": str(first)}) is None


def test_resolve_ignores_files_that_are_not_executable(tmp_path: Path) -> None:
    (tmp_path / "codex").write_text("not a program")
    assert resolve_executable("codex", {"PATH": str(tmp_path)}) is None


def test_resolve_checks_a_path_directly(tmp_path: Path) -> None:
    tool = _executable(tmp_path / "my-claude")
    assert resolve_executable(str(tool), {"PATH": ""}) == str(tool)
    assert resolve_executable(str(tmp_path / "missing"), {"PATH": str(tmp_path)}) is None
