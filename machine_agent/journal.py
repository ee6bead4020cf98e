"""The agent's spawn journal on its own disk: what it claimed, meant to start and started.

Redis acknowledgements can be lost (failover, restart without persistence), so the agent itself
guards against starting a session twice: the intent is written and fsynced before the process
starts, the outcome after. A restarted agent reads the journal, never starts a journaled spawn
again, and reports what it knows about the jobs its previous instance left unfinished.
"""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from machine_agent.private_files import append_private, private_dir, write_private

JOURNAL_FILE = "journal.jsonl"


class Event(enum.StrEnum):
    CLAIMED = "claimed"  # the job is ours; nothing started yet
    INTENT = "intent"  # about to start the process (fsynced before it starts)
    FINISHED = "finished"  # outcome known: `result` holds the encoded SpawnResult
    REPORTED = "reported"  # the outcome reached Redis; nothing left to recover


class Entry(msgspec.Struct, kw_only=True, omit_defaults=True):
    event: Event
    job_id: str
    instance: str
    at_ms: int
    idempotency: str = ""
    session_id: str = ""
    result: msgspec.Raw | None = None


@dataclass
class JobRecord:
    """Everything the journal says about one job; `last` is its latest event."""

    job_id: str
    instance: str
    last: Event
    idempotency: str = ""
    session_id: str = ""
    result: bytes = b""
    entries: list[Entry] = field(default_factory=list)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Entry)


class Journal:
    """An append-only JSON-lines file, read whole at start and compacted then."""

    def __init__(self, home: Path, *, retention_s: float) -> None:
        self.path = home / JOURNAL_FILE
        self.retention_ms = int(retention_s * 1000)
        self.jobs: dict[str, JobRecord] = {}
        self.by_idempotency: dict[str, JobRecord] = {}
        private_dir(home)
        self._load()
        self._compact()
        self._file = append_private(self.path)

    def close(self) -> None:
        self._file.close()

    def record(self, entry: Entry, *, durable: bool) -> None:
        """Append one entry; `durable` waits until it is on disk (fsync)."""
        self._file.write(_encoder.encode(entry) + b"\n")
        self._file.flush()
        if durable:
            os.fsync(self._file.fileno())
        self._apply(entry)

    def unfinished(self, current_instance: str) -> list[JobRecord]:
        """Jobs an earlier instance claimed whose outcome never reached Redis."""
        return [r for r in self.jobs.values() if r.last is not Event.REPORTED and r.instance != current_instance]

    def _apply(self, entry: Entry) -> None:
        record = self.jobs.get(entry.job_id)
        if record is None:
            record = self.jobs[entry.job_id] = JobRecord(entry.job_id, entry.instance, entry.event)
        record.last = entry.event
        record.entries.append(entry)
        if entry.idempotency:
            record.idempotency = entry.idempotency
            self.by_idempotency[entry.idempotency] = record
        if entry.session_id:
            record.session_id = entry.session_id
        if entry.result is not None:
            record.result = bytes(entry.result)

    def _load(self) -> None:
        if not self.path.exists():
            return
        for line in self.path.read_bytes().splitlines():
            try:
                self._apply(_decoder.decode(line))
            except msgspec.DecodeError:
                continue  # a line torn by a crash mid-write: its entry was never acknowledged

    def _compact(self) -> None:
        """Keep the entries of jobs younger than the retention (the idempotency window)."""
        horizon = int(time.time() * 1000) - self.retention_ms
        keep = {j: r for j, r in self.jobs.items() if r.entries[-1].at_ms >= horizon or r.last is not Event.REPORTED}
        tmp = self.path.with_suffix(".tmp")
        with write_private(tmp) as out:
            for record in keep.values():
                for entry in record.entries:
                    out.write(_encoder.encode(entry) + b"\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self.jobs = keep
        self.by_idempotency = {r.idempotency: r for r in keep.values() if r.idempotency}


def now_ms() -> int:
    return int(time.time() * 1000)
