"""The Redis key layout: the only place a key string is formed.

Everything an agent touches lives under `<prefix>:ns:<namespace>:`, so one ACL key pattern per
namespace confines its agents (the ownership record `<prefix>:owner:<id>` is the one exception,
read by the hub only to tell 403 from 404). A machine's keys share the Cluster hash tag
`{<namespace>:<machine>}`; a hub's reply inboxes share `{hub:<hub id>}` so one blocking pop can
wait on all of them.
"""

from __future__ import annotations

import msgspec


class Keys(msgspec.Struct, frozen=True):
    """Key builder for one prefix; tests use a fresh prefix each for isolation."""

    prefix: str

    def _machine(self, ns: str, machine_id: str) -> str:
        return f"{self.prefix}:ns:{ns}:m:{{{ns}:{machine_id}}}"

    def owner(self, machine_id: str) -> str:
        return f"{self.prefix}:owner:{machine_id}"

    def machines(self, ns: str) -> str:
        return f"{self.prefix}:ns:{ns}:machines"

    def info(self, ns: str, machine_id: str) -> str:
        return f"{self._machine(ns, machine_id)}:info"

    def heartbeat(self, ns: str, machine_id: str) -> str:
        return f"{self._machine(ns, machine_id)}:hb"

    def mailbox(self, ns: str, machine_id: str) -> str:
        return f"{self._machine(ns, machine_id)}:mailbox"

    def job(self, ns: str, machine_id: str, job_id: str) -> str:
        return f"{self._machine(ns, machine_id)}:job:{job_id}"

    def waiters(self, ns: str, machine_id: str, job_id: str) -> str:
        return f"{self._machine(ns, machine_id)}:job:{job_id}:waiters"

    def history(self, ns: str, machine_id: str) -> str:
        """ZSET of the machine's recent job ids, scored by creation time (Redis clock, ms)."""
        return f"{self._machine(ns, machine_id)}:jobs"

    def running(self, ns: str, machine_id: str) -> str:
        """SET of the machine's claimed jobs that have no outcome yet."""
        return f"{self._machine(ns, machine_id)}:running"

    def stats(self, ns: str, machine_id: str) -> str:
        """HASH counting the machine's jobs by the final state they reached."""
        return f"{self._machine(ns, machine_id)}:stats"

    def events(self, ns: str) -> str:
        """STREAM of the namespace's machine and job events, for live views."""
        return f"{self.prefix}:ns:{ns}:events"

    def idempotency(self, ns: str, machine_id: str, key_digest: str) -> str:
        return f"{self._machine(ns, machine_id)}:idem:{key_digest}"

    def inbox(self, ns: str, hub_id: str) -> str:
        return f"{self.prefix}:ns:{ns}:inbox:{{hub:{hub_id}}}"

    def hub_wake(self, hub_id: str) -> str:
        return f"{self.prefix}:hub:{{hub:{hub_id}}}:wake"

    def token(self, digest: str) -> str:
        return f"{self.prefix}:token:{digest}"

    def tokens(self, ns: str) -> str:
        return f"{self.prefix}:ns:{ns}:tokens"
