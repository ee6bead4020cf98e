"""One process hosting many simulated machines for bench/fleet.py: real `Agent`s on one event loop.

Every agent is the class `machine-hub agent` runs (pty launcher, its own home folder, its own
Redis connections), built with the settings in the environment. The process builds them all,
writes `<status>` with `built`, and starts them together when it gets SIGUSR1 (at most
STARTUP_GATE of them in their start-up at a time), so that the driver times a cold start of the
whole fleet and not Python's imports. It rewrites the status
file every second (agents started, running, crashed) and stops them all on SIGTERM.

    python bench/fleet_agents.py --first 0 --count 2500 --home /tmp/x --status /tmp/x/host-0.json
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import resource
import signal
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.machine_schemas import Health
from core.settings import Settings
from machine_agent import agent as agent_module, identity
from machine_agent.agent import Agent
from machine_agent.health import PROC, read_health

# What every agent of this process would read alike is read once: the package version (looking it
# up costs more than the rest of an Agent) and, at most once a second, the box's health (/proc
# reads with each beat were a third of the hosts' CPU). Each agent still beats on its own.
identity.version = functools.cache(identity.version)
_health: list[tuple[float, Health]] = []


def shared_health(proc: Path = PROC) -> Health:
    now = time.monotonic()
    if not _health or now - _health[0][0] > 1.0:
        _health[:] = [(now, read_health(proc))]
    return _health[0][1]


agent_module.read_health = shared_health  # type: ignore[attr-defined]


# Agents of one process that run their start-up at once. An agent on its own machine never waits
# behind 2,499 others on one event loop: all at once, their connects missed the 1 s connect timeout
# and their retries kept the loop too busy to ever catch up.
STARTUP_GATE = 100


def machine_id(i: int) -> str:
    return f"fleet-{i:05d}"


def raise_open_files() -> int:
    """The soft open-files limit up to the hard one; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Host:
    def __init__(self, agents: list[Agent], status: Path) -> None:
        self.agents, self.status = agents, status
        self.started = self.crashed = 0
        self.running: set[asyncio.Task[None]] = set()
        self.stop = asyncio.Event()
        self.starting = asyncio.Semaphore(STARTUP_GATE)

    async def run_one(self, agent: Agent) -> None:
        try:
            async with self.starting:
                await agent.startup()
            self.started += 1
            await agent.main_loop()
        except Exception:
            logging.exception("agent %s crashed", agent.machine_id)
            self.crashed += 1
            raise
        finally:
            await agent.shutdown()
        if not self.stop.is_set():  # the mailbox loop ended by itself (it logs why)
            self.crashed += 1

    def write_status(self, phase: str) -> None:
        state = {"phase": phase, "agents": len(self.agents), "started": self.started, "crashed": self.crashed}
        state["running"] = sum(1 for t in self.running if not t.done())
        tmp = self.status.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.status)

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        go = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, go.set)
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        self.write_status("built")
        await go.wait()
        for agent in self.agents:
            task = asyncio.create_task(self.run_one(agent))
            self.running.add(task)
        while not self.stop.is_set():
            self.write_status("running")
            try:
                await asyncio.wait_for(self.stop.wait(), 1.0)
            except TimeoutError:
                pass
        for agent in self.agents:
            agent.should_exit.set()
        await asyncio.gather(*self.running, return_exceptions=True)
        self.write_status("stopped")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first", type=int, default=0, help="number of the first machine (fleet-NNNNN)")
    parser.add_argument("--count", type=int, default=0, help="machines this process runs")
    parser.add_argument("--home", type=Path, required=True, help="folder for the agents' home folders")
    parser.add_argument("--status", type=Path, required=True, help="JSON status file, rewritten every second")
    parser.add_argument("--ids", default="", help="comma-separated machine ids instead of --first/--count")
    parser.add_argument("--cli-path", default="", help="PATH for the sessions and CLI probes of these agents")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise_open_files()
    settings = Settings.from_env()
    env = dict(os.environ)
    env["PATH"] = args.cli_path or str(args.home / "empty-bin")  # no CLI found: no --version process per agent
    ids = args.ids.split(",") if args.ids else [machine_id(i) for i in range(args.first, args.first + args.count)]
    agents = [Agent(settings, machine_id=m, home=args.home / m, env=env) for m in ids]
    host = Host(agents, args.status)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(host.main())
    return 1 if host.crashed else 0


if __name__ == "__main__":
    sys.exit(main())
