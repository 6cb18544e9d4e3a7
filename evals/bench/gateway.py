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

import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from evals.bench.loopback import LevelStats, free_port, server, sweep
from orchestrator.errors import ConfigError

PROMPT = "Answer in one word: what is the capital of France?"


class VLLMComparison(BaseModel):
    """vLLM's own server and the gateway in passthrough, on the same model and requests."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int
    engine: str
    vllm_server: list[LevelStats]
    gateway_passthrough: list[LevelStats]


class Overhead(BaseModel):
    """The gateway's latency over vLLM's server at one level, in percent."""

    model_config = ConfigDict(extra="forbid")

    p50: float
    p90: float
    p99: float


class RoutedComparison(BaseModel):
    """The routed model against the expert it asks for the benchmark's question, through
    one gateway serving the embedded default, driven in turns."""

    model_config = ConfigDict(extra="forbid")

    skills: str = Field(..., description="routing.skills: auto, keywords or embedding.")
    skills_from: str = Field(
        "", description="Where the routed model read the question's skills (its /v1/route)."
    )
    question: str
    expert: str = Field(..., description="The expert the routed model asked first.")
    routed: list[LevelStats]
    expert_alone: list[LevelStats]
    p50_ratio: dict[str, float] = Field(..., description="Routed p50 / expert p50, per level.")
    requests_per_s_ratio: dict[str, float] = Field(
        ..., description="Routed requests/s / expert requests/s, per level."
    )


class GatewayBenchResult(BaseModel):
    """`conclave bench gateway`. Without the vLLM comparison, `vllm` and
    `passthrough_overhead_pct` are None and left out of the dump (as the keys always were)."""

    model_config = ConfigDict(extra="forbid")

    machine: str
    batch_window_ms: float
    fake_expert: list[LevelStats]
    fake_peak_requests_per_s: float
    vllm: VLLMComparison | None = None
    passthrough_overhead_pct: dict[str, Overhead] | None = None
    routed: list[RoutedComparison] | None = None

    @model_serializer(mode="wrap")
    def _leave_out_the_skipped_comparison(
        self, handler: SerializerFunctionWrapHandler
    ) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.vllm is None:
            data.pop("vllm", None)
            data.pop("passthrough_overhead_pct", None)
        if self.routed is None:
            data.pop("routed", None)
        return data


def _serve_cmd(
    config: dict[str, Any], folder: Path, port: int, passthrough_only: bool = True
) -> list[str]:
    path = folder / f"config-{port}.json"
    path.write_text(json.dumps(config))
    cmd = [sys.executable, "-m", "orchestrator.cli", "serve", "--config", str(path)]
    return cmd + ["--port", str(port)] + (["--passthrough-only"] if passthrough_only else [])


def run_routed(
    folder: Path, levels: list[int], skills: str, batch_window_ms: float
) -> RoutedComparison:
    """`conclave serve` on the embedded default (built and profiled first if need be),
    the routed model against the expert it asks for one skillmix question, driven in
    turns at each level."""
    import httpx

    from agents.zoo.default import resolve_config
    from evals.datasets import eval_items
    from orchestrator.profiling import ensure_profile

    cfg = resolve_config(None, progress=False, on_event=lambda _: None)
    from orchestrator.conclave import Conclave

    with Conclave(cfg) as c:  # the profile the server will reuse (built once, cached)
        ensure_profile(c, eval_items("skillmix"), "skillmix", cfg.resolved_cache_dir())
    config = cfg.model_dump(mode="json", exclude_none=True)
    config["routing"]["skills"] = skills
    config["gateway"] = {"batch_window_ms": batch_window_ms, "max_queue": 4096}
    question = eval_items("skillmix", "test", limit=1)[0].question
    routed = {"model": "conclave", "messages": [{"role": "user", "content": question}]}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = _serve_cmd(config, folder, port, passthrough_only=False)
    with server(cmd, f"{base}/readyz", folder / f"routed-{skills}.log", timeout_s=900):
        url = f"{base}/v1/chat/completions"
        first = httpx.post(url, json=routed, timeout=300).json()
        expert = first["conclave"]["experts"][0]
        plan = httpx.post(f"{base}/v1/route", json={"question": question}, timeout=300).json()
        alone = {**routed, "model": expert}
        stats = sweep(
            {"routed": url, "expert": url},
            routed,
            levels,
            lambda c: max(40, 8 * c),
            rounds=2,
            bodies={"expert": alone},
        )
    pairs = list(zip(stats["routed"], stats["expert"], strict=True))
    return RoutedComparison(
        skills=skills,
        skills_from=(plan.get("explanation") or {}).get("skills_from", ""),
        question=question,
        expert=expert,
        routed=stats["routed"],
        expert_alone=stats["expert"],
        p50_ratio={str(r.concurrency): round(r.p50_ms / e.p50_ms, 2) for r, e in pairs},
        requests_per_s_ratio={
            str(r.concurrency): round(r.requests_per_s / e.requests_per_s, 2) for r, e in pairs
        },
    )


def run_fake(
    folder: Path, levels: list[int], requests: int, batch_window_ms: float
) -> list[LevelStats]:
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
) -> dict[str, list[LevelStats]]:
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
    routed_levels: list[int] | None = None,
) -> GatewayBenchResult:
    """The fake-expert sweep over `levels`, then (`with_vllm`) the passthrough comparison
    with vLLM's own server over `vllm_levels` (default: `levels`), then (`routed_levels`)
    the routed model against the expert it asks on the embedded default, with skills
    from the keyword model and from embeddings."""
    if not levels or min(levels) < 1:
        raise ConfigError("concurrency levels must be positive integers, e.g. 1,16,64")
    with tempfile.TemporaryDirectory(prefix="conclave-bench-gw-") as tmp:
        folder = Path(tmp)
        fake = run_fake(folder, levels, fake_requests, batch_window_ms)
        res = GatewayBenchResult(
            machine=f"{platform.machine()}, {os.cpu_count()} cores",
            batch_window_ms=batch_window_ms,
            fake_expert=fake,
            fake_peak_requests_per_s=max(r.requests_per_s for r in fake),
        )
        if with_vllm:
            from agents.zoo.tiny import TINY_ENGINE_ARGS
            from evals.bench.pool import build_tiny_zoo

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
            res.vllm = VLLMComparison(
                model=str(model),
                max_tokens=max_tokens,
                engine="in the actor's process" if in_process else "a process of its own",
                vllm_server=vl["vllm_server"],
                gateway_passthrough=vl["gateway_passthrough"],
            )
            pairs = zip(vl["vllm_server"], vl["gateway_passthrough"], strict=True)
            by_c = {r.concurrency: (r, g) for r, g in pairs}
            res.passthrough_overhead_pct = {
                str(c): Overhead(
                    p50=round(100 * (g.p50_ms / r.p50_ms - 1), 1),
                    p90=round(100 * (g.p90_ms / r.p90_ms - 1), 1),
                    p99=round(100 * (g.p99_ms / r.p99_ms - 1), 1),
                )
                for c, (r, g) in by_c.items()
            }
        if routed_levels:
            res.routed = [
                run_routed(folder, routed_levels, skills, batch_window_ms)
                for skills in ("auto", "keywords")
            ]
    return res
