"""How heartbeat notifications become batches of looks (core.notifications.Looks), with a sweeper
that only records what it is asked."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from core.notifications import BATCHES_AT_ONCE, LOOK_BATCH, Looks
from core.sweeps import Sweeper

Machine = tuple[str, str]


class Recorder:
    """Stands in for the Sweeper: each batch waits for the test to release it."""

    def __init__(self) -> None:
        self.batches: list[list[Machine]] = []
        self.release = asyncio.Event()
        self.fail_with: Exception | None = None

    async def check_many(self, machines: list[Machine]) -> None:
        self.batches.append(list(machines))
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with


def looks_with(recorder: Recorder) -> Looks:
    return Looks(cast(Sweeper, recorder))


async def settle(looks: Looks) -> None:
    while looks.running:
        await asyncio.gather(*looks.running, return_exceptions=True)


def machine(i: int) -> Machine:
    return ("default", f"box-{i}")


async def test_a_crowd_of_notifications_becomes_a_few_batches() -> None:
    recorder = Recorder()
    looks = looks_with(recorder)
    for i in range(1000):
        looks.add(machine(i))
    await asyncio.sleep(0)  # the batches started so far begin
    # The first notifications each started a batch; the rest wait, to go together.
    assert [len(b) for b in recorder.batches] == [1] * BATCHES_AT_ONCE
    recorder.release.set()
    await settle(looks)
    sizes = [len(b) for b in recorder.batches]
    assert sum(sizes) == 1000 and max(sizes) == LOOK_BATCH
    assert len(sizes) == BATCHES_AT_ONCE + 2  # 996 waiting machines: two batches of at most 500
    assert sorted(m for b in recorder.batches for m in b) == sorted(machine(i) for i in range(1000))


async def test_a_machine_is_never_in_two_batches_at_once_and_repeats_are_looked_at_once() -> None:
    recorder = Recorder()
    looks = looks_with(recorder)
    looks.add(machine(0))  # created
    looks.add(machine(0))  # deleted while its first look runs: waits for it
    looks.add(machine(0))  # and again: the one look still to come covers it
    looks.add(machine(1))
    await asyncio.sleep(0)
    assert recorder.batches == [[machine(0)], [machine(1)]]
    recorder.release.set()
    await settle(looks)
    assert recorder.batches == [[machine(0)], [machine(1)], [machine(0)]]


async def test_a_failed_batch_fails_the_listener_and_starts_no_other() -> None:
    recorder = Recorder()
    recorder.fail_with = ConnectionError("Redis went away")
    looks = looks_with(recorder)
    for i in range(BATCHES_AT_ONCE + 3):
        looks.add(machine(i))
    recorder.release.set()
    await settle(looks)
    assert len(recorder.batches) == BATCHES_AT_ONCE
    with pytest.raises(ConnectionError):
        looks.raise_failure()
    await looks.close()
    assert not looks.pending and not looks.running
