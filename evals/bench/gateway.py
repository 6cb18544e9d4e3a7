"""`conclave bench gateway`: latency and throughput of the gateway on loopback.

Each server runs in its own process (`conclave serve`, or vLLM's own OpenAI-compatible
server), started and stopped here; this process drives it with `concurrency` clients in a
closed loop (each sends its next request when the last one is answered) and records every
request's latency. Two comparisons:

- a zero-cost fake expert: the gateway's own overhead (HTTP, validation, micro-batching,
  the pool's thread hop) and its requests/s;
- a tiny vLLM model in passthrough through the gateway against vLLM's own server for the
  same model, engine arguments and requests: both servers up at once, driven in turns
  (four parts per level, rotating which goes first), so that a machine whose speed drifts
  favours neither.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError

PROMPT = "Answer in one word: what is the capital of France?"


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


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """p50/p99 over every request of `runs` (same level), and requests/s over their time."""
    latencies = sorted(x for r in runs for x in r["latencies"])
    wall = sum(r["wall"] for r in runs)

    def pct(p: float) -> float:
        if not latencies:
            return float("nan")
        return round(1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))], 2)

    return {
        "concurrency": runs[0]["concurrency"],
        "requests": len(latencies) + sum(r["errors"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "requests_per_s": round(len(latencies) / wall, 1) if wall else 0.0,
    }


def sweep(
    urls: dict[str, str],
    body: dict[str, Any],
    levels: list[int],
    requests: Callable[[int], int],
    rounds: int = 1,
    warmup: int = 8,
) -> dict[str, list[dict[str, Any]]]:
    """For each server (name -> chat URL) and concurrency level, `requests(level)`
    requests in `rounds` parts, the servers taking turns part by part (so a machine whose
    speed drifts favours none), after `warmup` requests each that are not counted."""
    for url in urls.values():
        asyncio.run(_drive(url, body, min(warmup, 4), warmup))
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in urls}
    for c in levels:
        parts: dict[str, list[dict[str, Any]]] = {name: [] for name in urls}
        names = list(urls)
        for rnd in range(rounds):
            for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
                n = max(c, requests(c) // rounds)
                parts[name].append(asyncio.run(_drive(urls[name], body, c, n)))
        for name in urls:
            out[name].append(_summary(parts[name]))
    return out


def _serve_cmd(config: dict[str, Any], folder: Path, port: int) -> list[str]:
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    return [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "serve",
        "--config",
        str(path),
        "--port",
        str(port),
        "--passthrough-only",
    ]


def run_fake(
    folder: Path, levels: list[int], requests: int, batch_window_ms: float
) -> list[dict[str, Any]]:
    """The gateway over a fake expert that answers instantly."""
    port = free_port()
    config = {
        "cluster": {"dashboard": False},
        "pool": {"experts": [{"name": "echo", "backend": {"type": "fake", "answer": "Paris"}}]},
        "gateway": {"batch_window_ms": batch_window_ms, "max_queue": 4096},
    }
    body = {"model": "echo", "messages": [{"role": "user", "content": PROMPT}]}
    base = f"http://127.0.0.1:{port}"
    with server(_serve_cmd(config, folder, port), f"{base}/readyz", folder / "fake.log"):
        url = f"{base}/v1/chat/completions"
        return sweep({"fake": url}, body, levels, lambda c: max(requests, 8 * c))["fake"]


def run_vllm(
    folder: Path,
    model_dir: Path,
    engine_args: dict[str, Any],
    levels: list[int],
    requests: int,
    max_tokens: int,
    batch_window_ms: float,
    in_process: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """vLLM's own server and the gateway in passthrough, on the same model, engine
    arguments and requests, both up at once and driven in turns. `in_process`: the
    expert's engine core runs in its actor's process (the config's default, which starts
    fast) rather than a process of its own (as vLLM's server runs it, stepping the model
    while the other process renders prompts and detokenizes)."""
    body = {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    port = free_port()
    flags: list[str] = []
    for k, v in engine_args.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            flags.append(flag)
        elif v is not False:
            flags += [flag, str(v)]
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        "tiny",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *flags,
    ]
    vllm_base = f"http://127.0.0.1:{port}"
    port = free_port()
    config = {
        "cluster": {"dashboard": False},
        "pool": {
            "experts": [
                {
                    "name": "tiny",
                    "backend": {
                        "type": "vllm",
                        "model": str(model_dir),
                        "engine_args": engine_args,
                        "in_process": in_process,
                    },
                    "resources": {"num_cpus": 1, "memory_gb": 1.0},
                }
            ]
        },
        "gateway": {"batch_window_ms": batch_window_ms},
    }
    gw_base = f"http://127.0.0.1:{port}"
    with (
        server(cmd, f"{vllm_base}/v1/models", folder / "vllm.log"),
        server(_serve_cmd(config, folder, port), f"{gw_base}/readyz", folder / "gateway.log"),
    ):
        urls = {
            "vllm_server": f"{vllm_base}/v1/chat/completions",
            "gateway_passthrough": f"{gw_base}/v1/chat/completions",
        }
        return sweep(urls, body | {"model": "tiny"}, levels, lambda c: requests, rounds=4)


def run_gateway_bench(
    levels: list[int],
    fake_requests: int = 1000,
    vllm_requests: int = 384,
    vllm_levels: list[int] | None = None,
    max_tokens: int = 16,
    batch_window_ms: float = 5.0,
    with_vllm: bool = True,
    cache_dir: Path | None = None,
    in_process: bool = True,
) -> dict[str, Any]:
    if not levels or min(levels) < 1:
        raise ConfigError("concurrency levels must be positive integers, e.g. 1,16,64")
    res: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "batch_window_ms": batch_window_ms,
    }
    with tempfile.TemporaryDirectory(prefix="conclave-bench-gw-") as tmp:
        folder = Path(tmp)
        fake = run_fake(folder, levels, fake_requests, batch_window_ms)
        res["fake_expert"] = fake
        res["fake_peak_requests_per_s"] = max(r["requests_per_s"] for r in fake)
        if with_vllm:
            from agents.zoo.tiny import TINY_ENGINE_ARGS
            from workers.bench import build_tiny_zoo

            model = build_tiny_zoo(1, cache_dir)[0]
            vl = run_vllm(
                folder,
                model,
                TINY_ENGINE_ARGS,
                vllm_levels or levels,
                vllm_requests,
                max_tokens,
                batch_window_ms,
                in_process,
            )
            res["vllm"] = {
                "model": str(model),
                "max_tokens": max_tokens,
                "engine": "in the actor's process" if in_process else "a process of its own",
                **vl,
            }
            by_c = {
                r["concurrency"]: (r, g)
                for r, g in zip(vl["vllm_server"], vl["gateway_passthrough"], strict=True)
            }
            res["passthrough_overhead_pct"] = {
                str(c): {
                    "p50": round(100 * (g["p50_ms"] / r["p50_ms"] - 1), 1),
                    "p90": round(100 * (g["p90_ms"] / r["p90_ms"] - 1), 1),
                    "p99": round(100 * (g["p99_ms"] / r["p99_ms"] - 1), 1),
                }
                for c, (r, g) in by_c.items()
            }
    return res
