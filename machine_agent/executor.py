"""Runs one claimed job and turns its outcome into a final state and an encoded result."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping

import msgspec

from core.schemas import ClaimedJob, JobKind, JobState, PathsRequest, PathsResult, SpawnRequest, SpawnResult
from core.settings import Settings
from machine_agent.paths import check_paths, real_roots
from machine_agent.spawner import Spawner

log = logging.getLogger(__name__)
_encoder = msgspec.json.Encoder()
_spawn_args = msgspec.json.Decoder(SpawnRequest)
_paths_args = msgspec.json.Decoder(PathsRequest)


class Executor:
    def __init__(
        self, settings: Settings, spawner: Spawner, *, namespace: str, machine_id: str, env: Mapping[str, str]
    ) -> None:
        self.spawner = spawner
        self.namespace = namespace
        self.machine_id = machine_id
        self.home = env.get("HOME") or os.path.expanduser("~")
        self.roots = real_roots(settings.roots, self.home)

    async def run(self, job: ClaimedJob) -> tuple[JobState, bytes]:
        try:
            if job.kind is JobKind.PATHS:
                return await self._paths(job)
            return await self._spawn(job)
        except msgspec.DecodeError as exc:
            # A hub newer or older than this agent sent arguments it cannot read.
            log.error("job %s: unreadable arguments: %s", job.job_id, exc)
            return JobState.FAILED, self._failure(job.kind, f"unreadable job arguments: {exc}", "bad_request")
        except Exception as exc:
            log.exception("job %s failed", job.job_id)
            return JobState.FAILED, self._failure(job.kind, f"{type(exc).__name__}: {exc}", "agent_error")

    async def _paths(self, job: ClaimedJob) -> tuple[JobState, bytes]:
        request = _paths_args.decode(job.args)
        exists = await asyncio.to_thread(check_paths, request.paths, home=self.home, roots=self.roots)
        return JobState.SUCCEEDED, _encoder.encode(PathsResult(exists=exists))

    async def _spawn(self, job: ClaimedJob) -> tuple[JobState, bytes]:
        request = _spawn_args.decode(job.args)
        result = await self.spawner.spawn(
            request, job_id=job.job_id, namespace=self.namespace, machine_id=self.machine_id
        )
        return (JobState.SUCCEEDED if result.success else JobState.FAILED), _encoder.encode(result)

    @staticmethod
    def _failure(kind: JobKind, error: str, code: str) -> bytes:
        if kind is JobKind.PATHS:
            return _encoder.encode(PathsResult(error=error, code=code))
        return _encoder.encode(SpawnResult(success=False, error=error, code=code))
