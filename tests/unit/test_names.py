from __future__ import annotations

import pytest

from core.names import valid_machine_id, valid_namespace, worktree_slug


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Fix Login!", "fix-login"),
        ("  feature/ABC_12  ", "feature-abc-12"),
        ("--x--", "x"),
        ("!!!", ""),
        ("ümlaut", "mlaut"),
        ("a" * 100, "a" * 48),
    ],
)
def test_worktree_slug(name: str, slug: str) -> None:
    assert worktree_slug(name) == slug


@pytest.mark.parametrize("name", ["default", "team-1", "a.b_c", "A" * 64])
def test_valid_namespaces(name: str) -> None:
    assert valid_namespace(name)


@pytest.mark.parametrize("name", ["", "-x", ".x", "a b", "a:b", "a{b}", "a/b", "A" * 65])
def test_invalid_namespaces(name: str) -> None:
    assert not valid_namespace(name)


def test_machine_ids_cannot_break_keys_or_hash_tags() -> None:
    assert valid_machine_id("machine_0f3a") and valid_machine_id("host.example-1")
    for bad in ["", "{x}", "a:b", "a b", "-x", "x" * 129]:
        assert not valid_machine_id(bad)
