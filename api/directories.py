"""Directories on a machine, for picking where a session runs: the recent ones and a folder's
sub-folders.

Recent directories are derived from the namespace's job index and the spawn records' arguments
(core.history), so spawning pays nothing for them and they live as long as the job records. A
folder is listed by the machine's agent through its queue, as a read-only job like a path check.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.dispatch import JobSpec
from api.hub import hub_of
from api.requests import check_owner, decode, encoder, json_response, parse, read_result, submit, target
from core.errors import DirectoryFailed, InvalidBody, MachineNotFound
from core.machine_schemas import DirectoryListing, DirectoryRequest, DirectoryResult, RecentDirectories, RecentDirectory
from core.schemas import MAX_PATH_BYTES, JobKind

MAX_RECENT = 20
_request_decoder = msgspec.json.Decoder(DirectoryRequest)
_result_decoder = msgspec.json.Decoder(DirectoryResult)


async def recent_directories(request: Request) -> Response:
    hub = hub_of(request)
    ns, machine_id = await target(hub, request)
    await check_owner(hub, ns, machine_id, MachineNotFound)
    found = await hub.history.recent_directories(ns, machine_id, limit=MAX_RECENT)
    directories = [RecentDirectory(path=path, last_spawned_at=at) for path, at in found]
    return json_response(RecentDirectories(directories=directories))


def _directory_args(raw: bytes) -> DirectoryRequest:
    body = decode(raw, _request_decoder)
    path = body.path.strip()
    if not path:
        raise InvalidBody("path must not be empty - at `$.path`")
    if len(path.encode()) > MAX_PATH_BYTES:
        raise InvalidBody(f"path is longer than {MAX_PATH_BYTES} bytes - at `$.path`")
    return msgspec.structs.replace(body, path=path)


async def list_directory(request: Request) -> Response:
    hub = hub_of(request)
    ns, machine_id = await target(hub, request)
    body = await parse(hub, request, ns, machine_id, _directory_args)
    settings = hub.settings
    spec = JobSpec(
        JobKind.DIRECTORY,
        encoder.encode(body),
        settings.paths_timeout_s,
        settings.paths_timeout_s,
        0.0,  # read-only: no record to keep
        b"null",
    )
    result = read_result(machine_id, await submit(hub, ns, machine_id, spec), DirectoryFailed, _result_decoder)
    return json_response(DirectoryListing(path=result.path, entries=result.entries, truncated=result.truncated))
