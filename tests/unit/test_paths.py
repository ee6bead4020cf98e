from __future__ import annotations

from pathlib import Path

from machine_agent.paths import check_paths, real_roots, resolve


def test_resolve_uses_the_home_for_tilde_and_relative_paths() -> None:
    assert resolve("~", "/home/u") == "/home/u"
    assert resolve("~/a/../b", "/home/u") == "/home/u/b"
    assert resolve("src", "/home/u") == "/home/u/src"
    assert resolve("/etc", "/home/u") == "/etc"
    assert resolve("~other", "/home/u") == "/home/u/~other"


def test_check_paths_any_type_and_symlinks_followed(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    (tmp_path / "ok").symlink_to(tmp_path / "d")
    (tmp_path / "broken").symlink_to(tmp_path / "none")
    got = check_paths(["f", "d", "ok", "broken", "none", "~"], home=str(tmp_path), roots=())
    assert got == {"f": True, "d": True, "ok": True, "broken": False, "none": False, "~": True}


def test_paths_outside_the_roots_read_false(tmp_path: Path) -> None:
    inside = tmp_path / "work"
    (inside / "p").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (inside / "escape").symlink_to(tmp_path / "secret")
    (tmp_path / "work-2").mkdir()
    roots = real_roots(["~/work"], str(tmp_path))
    got = check_paths(
        [str(inside), str(inside / "p"), str(tmp_path / "secret"), str(inside / "escape"), str(tmp_path / "work-2")],
        home=str(tmp_path),
        roots=roots,
    )
    assert got == {
        str(inside): True,
        str(inside / "p"): True,
        str(tmp_path / "secret"): False,
        str(inside / "escape"): False,
        str(tmp_path / "work-2"): False,
    }
