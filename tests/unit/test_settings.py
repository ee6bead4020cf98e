from __future__ import annotations

import pytest

from core.errors import SettingsError
from core.settings import Settings, env_name


def test_env_names_keep_hapi_names_and_prefix_the_rest() -> None:
    assert env_name("redis_url") == "REDIS_URL"
    assert env_name("cli_api_token") == "CLI_API_TOKEN"
    assert env_name("heartbeat_ttl_s") == "MACHINE_HUB_HEARTBEAT_TTL_S"


def test_values_are_read_from_strings() -> None:
    s = Settings.from_env(
        {
            "REDIS_URL": "redis://r:1/2",
            "MACHINE_HUB_HEARTBEAT_INTERVAL_S": "2",
            "MACHINE_HUB_PORT": "8080",
            "MACHINE_HUB_ROOTS": "/a:/b",
            "MACHINE_HUB_AGENT_COMMANDS": '{"claude": ["/opt/claude", "--x"]}',
            "MACHINE_HUB_SESSION_ID": "ignored: sessions inherit MACHINE_HUB_* variables",
            "UNRELATED": "x",
        }
    )
    assert s.redis_url == "redis://r:1/2"
    assert s.heartbeat_interval_s == 2.0 and s.port == 8080
    assert s.roots == ("/a", "/b")
    assert s.agent_commands == {"claude": ["/opt/claude", "--x"]}


def test_overrides_win_and_none_means_not_given() -> None:
    s = Settings.from_env({"MACHINE_HUB_NAMESPACE": "a", "MACHINE_HUB_PORT": "1"}, {"namespace": "b", "port": None})
    assert s.namespace == "b" and s.port == 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MACHINE_HUB_PORT": "eighty"}, "$.port"),
        ({"MACHINE_HUB_HEARTBEAT_TTL_S": "1", "MACHINE_HUB_HEARTBEAT_INTERVAL_S": "2"}, "heartbeat_ttl_s"),
        ({"MACHINE_HUB_AGENT_COMMANDS": "{oops"}, "MACHINE_HUB_AGENT_COMMANDS"),
        ({"MACHINE_HUB_AGENT_COMMANDS": '{"claude": "claude"}'}, "$.agent_commands"),
        ({"MACHINE_HUB_WORKTREE_BRANCH_PREFIX": "-x"}, "worktree_branch_prefix"),
        ({"MACHINE_HUB_SPAWN_CLAIM_TIMEOUT_S": "60"}, "spawn_claim_timeout_s"),
        ({"MACHINE_HUB_BLOCK_S": "0"}, "block_s"),
        ({"MACHINE_HUB_WEBHOOK_RETRY_MAX_S": "5"}, "webhook_retry_max_s"),
        ({"MACHINE_HUB_WEBHOOK_TIMEOUT_S": "0"}, "webhook_timeout_s"),
        ({"MACHINE_HUB_MAX_WEBHOOKS_PER_NAMESPACE": "-1"}, "max_webhooks_per_namespace"),
        ({"MACHINE_HUB_WEBHOOK_ALLOW_PRIVATE": "maybe"}, "$.webhook_allow_private"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("$", r"\$").replace(".", r"\.")):
        Settings.from_env(env)


def test_to_env_round_trips() -> None:
    s = Settings(
        cli_api_token="t", roots=("/x", "/y"), agent_commands={"codex": ["c"]}, block_s=1.5, webhook_allow_private=True
    )
    assert Settings.from_env(s.to_env()) == s
