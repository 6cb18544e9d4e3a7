"""A closed-loop load driver on loopback: start a server in its own process, drive it
with `concurrency` clients (each sends its next request when the last one is answered),
and summarize every request's latency per concurrency level. `conclave bench gateway`
drives the gateway and vLLM's own server with it; real tests start servers with it."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from orchestrator.errors import ConfigError


class LevelStats(BaseModel):
    """One server at one concurrency level: latency percentiles over every request."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests_per_s: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(cmd: list[str], ready_url: str, log: Path, timeout_s: float = 300) -> Iterator[None]:
    """Run `cmd` until the block ends; ready once `ready_url` answers 200."""
    import httpx

    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise ConfigError(
                    f"server {' '.join(cmd[:4])} ... exited with {proc.returncode}; "
                    f"its log ends:\n{log.read_text()[-2000:]}"
                )
            try:
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ConfigError(f"server not ready in {timeout_s:g} s; see {log}")
            time.sleep(0.5)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _drive(url: str, body: dict[str, Any], concurrency: int, requests: int) -> dict[str, Any]:
    """`requests` POSTs of `body` from `concurrency` closed-loop clients. aiohttp: httpx's
    async pool is the bottleneck past ~16 connections (measured: 160 requests/s at 64
    clients where aiohttp drives the same gateway at 1,070)."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    left = requests
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal left, errors
            while left > 0:
                left -= 1
                t0 = time.perf_counter()
                async with session.post(url, json=body) as r:
                    await r.read()
                    ok = r.status == 200
                dt = time.perf_counter() - t0
                if ok:
                    latencies.append(dt)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "latencies": latencies, "errors": errors, "wall": wall}


def percentile_ms(ordered: list[float], p: float) -> float | None:
    """The `p` quantile (0-1) of latencies in seconds, sorted, in milliseconds: the
    request at rank floor(p * n); None without any."""
    if not ordered:
        return None
    return 1000 * ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def _summary(runs: list[dict[str, Any]]) -> LevelStats:
    """p50/p99 over every request of `runs` (same level), and requests/s over their time."""
    latencies = sorted(x for r in runs for x in r["latencies"])
    wall = sum(r["wall"] for r in runs)

    def pct(p: float) -> float:
        ms = percentile_ms(latencies, p)
        return float("nan") if ms is None else round(ms, 2)

    return LevelStats(
        concurrency=runs[0]["concurrency"],
        requests=len(latencies) + sum(r["errors"] for r in runs),
        errors=sum(r["errors"] for r in runs),
        p50_ms=pct(0.50),
        p90_ms=pct(0.90),
        p99_ms=pct(0.99),
        requests_per_s=round(len(latencies) / wall, 1) if wall else 0.0,
    )


def sweep(
    urls: dict[str, str],
    body: dict[str, Any],
    levels: list[int],
    requests: Callable[[int], int],
    rounds: int = 1,
    warmup: int = 8,
    bodies: dict[str, dict[str, Any]] | None = None,
) -> dict[str, list[LevelStats]]:
    """For each server (name -> chat URL) and concurrency level, `requests(level)`
    requests in `rounds` parts, the servers taking turns part by part (so a machine whose
    speed drifts favours none), after `warmup` requests each that are not counted.
    `bodies` gives a name a body of its own (two models behind one URL)."""
    bodies = {name: (bodies or {}).get(name, body) for name in urls}
    for name, url in urls.items():
        asyncio.run(_drive(url, bodies[name], min(warmup, 4), warmup))
    out: dict[str, list[LevelStats]] = {name: [] for name in urls}
    for c in levels:
        parts: dict[str, list[dict[str, Any]]] = {name: [] for name in urls}
        names = list(urls)
        for rnd in range(rounds):
            for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
                n = max(c, requests(c) // rounds)
                parts[name].append(asyncio.run(_drive(urls[name], bodies[name], c, n)))
        for name in urls:
            out[name].append(_summary(parts[name]))
    return out
