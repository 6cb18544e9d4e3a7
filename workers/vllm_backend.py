"""A vLLM engine in a Ray actor of its own: one actor per resident model (the client side).

Loading an expert creates its actor (named `expert:<name>` so the Ray dashboard shows it),
placed by the expert's resources; unloading kills the actor, which frees the model's
memory with its process. One engine per process is also what vLLM's in-process mode
requires (a second engine in the same process fails for MoE models).

This module runs in the pool's process: it places the actor, loads and unloads it, and
turns Ray's failures into ours. What runs inside the actor (the engine and the thread that
steps it) is `workers.engine_host`; the MoE expert-count hooks are `workers.moe_hooks`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from orchestrator.config import VLLMBackendConfig
from orchestrator.errors import (
    EngineDeadError,
    GenerationError,
    ModelLoadError,
    RequestRejectedError,
)
from workers.backend import ExpertBackend
from workers.batch import GenerationRequest, GenerationResult
from workers.cluster import actor_name, ensure_ray, job_id
from workers.engine_host import ENGINE_CALLS, EngineHost
from workers.placement import bundle, release, reserve

if TYPE_CHECKING:
    from orchestrator.config import ConclaveConfig, ExpertConfig

log = logging.getLogger(__name__)


def _cause(exc: BaseException) -> str:
    """The innermost error line of a Ray exception (its message holds a whole traceback)."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    lines = [ln for ln in text if ln.strip() and not ln.startswith((" ", "Traceback"))]
    return lines[-1] if lines else type(exc).__name__


class VLLMBackend(ExpertBackend):
    """Hosts the expert's model in a vLLM engine inside a Ray actor."""

    continuous_batching = True
    uses_ray = True

    #: How long to wait for the actor to be placed and the engine to start.
    load_timeout_s: float = 1800.0

    def __init__(self, config: ExpertConfig, service: ConclaveConfig) -> None:
        super().__init__(config, service)
        assert isinstance(config.backend, VLLMBackendConfig)
        self.spec: VLLMBackendConfig = config.backend
        self._actor: Any = None
        self._pg: Any = None  # the placement group reserving the actor's node room
        self._starting: Any = None  # the actor while its engine loads
        self._borrowed = False  # the actor is another job's (cluster.attach)
        self.load_info: dict[str, Any] = {}

    @property
    def actor_name(self) -> str:
        """This job's actor for the expert (Ray connected): each job loads its own, unless
        it attaches to another's (`cluster.attach`)."""
        return actor_name(self.name, self.cluster.attach or job_id())

    def _attach(self) -> None:
        """Use the actor another job loaded (`cluster.attach`), without owning it."""
        import ray

        ensure_ray(self.cluster)
        try:
            actor = ray.get_actor(self.actor_name, namespace=self.cluster.namespace)
        except ValueError:
            raise ModelLoadError(
                f"job {self.cluster.attach} (cluster.attach) has no loaded engine for this "
                "expert: load it there (preload), or drop --attach to load one here",
                expert=self.name,
            ) from None
        self.load_info = ray.get(actor.info.remote(), timeout=60)
        self._actor, self._borrowed = actor, True
        log.info("%s: using job %s's engine", self.name, self.cluster.attach)

    @property
    def loaded(self) -> bool:
        return self._actor is not None

    @property
    def dtype(self) -> tuple[str, str] | None:
        info = self.load_info if self.loaded else {}
        return (info["dtype"], info.get("dtype_why", "")) if "dtype" in info else None

    def engine_args(self) -> dict[str, Any]:
        args = dict(self.spec.engine_args)
        parallel = args.get("tensor_parallel_size", 1) * args.get("pipeline_parallel_size", 1)
        if self.spec.in_process and parallel == 1:
            args.setdefault("distributed_executor_backend", "uni")
        return args

    def runtime_env(self) -> dict[str, Any]:
        env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
        if self.engine_args().get("distributed_executor_backend") == "uni":
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        env["VLLM_CACHE_ROOT"] = os.environ.get("VLLM_CACHE_ROOT") or str(
            self.service.resolved_cache_dir() / "vllm"
        )
        env.update(self.spec.env)
        return {"env_vars": env}

    def actor_resources(self) -> dict[str, float]:
        res = self.config.resources
        return {"CPU": res.num_cpus, "GPU": res.num_gpus}

    def cluster_capacity(self) -> dict[str, float]:
        import ray

        total = ray.cluster_resources()
        return {"CPU": total.get("CPU", 0.0), "GPU": total.get("GPU", 0.0)}

    def _check_placeable(self) -> None:
        import ray

        res = self.config.resources
        total = ray.cluster_resources()
        for key, need in (("CPU", res.num_cpus), ("GPU", res.num_gpus)):
            if need > total.get(key, 0.0):
                raise ModelLoadError(
                    f"needs {need} {key} but the Ray cluster has {total.get(key, 0.0):g}; lower "
                    f"resources.num_{key.lower()}s or join a cluster that has them",
                    expert=self.name,
                )

    def prepare(self) -> None:
        # ray.init belongs on the main thread (it installs signal handlers); loads may not be.
        try:
            ensure_ray(self.cluster)
        except Exception as exc:
            where = self.cluster.address or os.environ.get("RAY_ADDRESS") or "a local cluster"
            raise ModelLoadError(
                f"cannot start or reach Ray ({where}): {exc}", expert=self.name
            ) from exc

    def load(self) -> None:
        self._load()

    def reload(self) -> None:
        self._load(nice=self.cluster.restart_nice)

    def _load(self, nice: int = 0) -> None:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if self.cluster.attach:
            return self._attach()
        ensure_ray(self.cluster)
        self._check_placeable()
        self._wait_name_free()
        res = self.config.resources
        # room on one node first, or an error within the timeout (not a silent wait)
        pg = reserve(self.name, res, self.cluster.placement_timeout_s, self.actor_name)
        host = ray.remote(_titled(self.name)).options(
            name=self.actor_name,
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
            resources={k: v for k, v in bundle(res).items() if k not in ("CPU", "GPU")},
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=0
            ),
            runtime_env=self.runtime_env(),
            max_restarts=0,
            # callers wait in threads of their own while the engine's thread batches them
            max_concurrency=ENGINE_CALLS,
        )
        # memory_gb bounds what float32 may take on a CPU without native bf16 (`workers.dtype`)
        limit = int(res.memory_gb * 2**30)
        actor = host.remote(self.spec.model, self.spec.tokenizer, self.engine_args(), nice, limit)
        self._starting = actor  # an unload meanwhile (the pool closing) kills it too
        try:
            self.load_info = ray.get(actor.info.remote(), timeout=self.load_timeout_s)
        except GetTimeoutError:
            ray.kill(actor)
            release(pg)
            raise ModelLoadError(
                f"engine not ready after {self.load_timeout_s:.0f} s (too slow)",
                expert=self.name,
            ) from None
        except (RayActorError, RayTaskError) as exc:
            ray.kill(actor)
            release(pg)
            if self._starting is None:  # unloaded while it started: that is the cause
                raise ModelLoadError("unloaded while loading", expert=self.name) from None
            # the details (with the model's path on this server) go to the log; what
            # clients see names the expert, not where the server keeps its files
            log.warning("%s could not load %s: %s", self.name, self.spec.model, _cause(exc))
            why = _cause(exc).replace(str(self.spec.model), "<its model>")
            raise ModelLoadError(f"could not load its model: {why}", expert=self.name) from None
        finally:
            self._starting = None
        self._actor, self._pg = actor, pg
        niced = self.load_info.get("load_nice")
        dtype_why = self.load_info.get("dtype_why")
        log.info(
            "%s ready in %.1f s%s, in %s%s",
            self.name,
            self.load_info.get("load_s", 0.0),
            f" (loaded at niceness {niced})" if niced else "",
            self.load_info.get("dtype", "?"),
            f" ({dtype_why})" if dtype_why else "",
        )

    def _payload(self, requests: list[GenerationRequest]) -> list[dict[str, Any]]:
        return [
            {
                "messages": [m.model_dump() for m in r.messages] if r.messages else None,
                "prompt": r.prompt,
                "sampling": self.config.sampling.merged(r.sampling).model_dump(),
            }
            for r in requests
        ]

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        if self._actor is None:
            raise EngineDeadError("generate called on an unloaded expert", expert=self.name)
        try:
            outs = ray.get(self._actor.generate.remote(self._payload(requests)))
        except RayActorError as exc:  # the actor's process is gone
            self._actor = None
            raise EngineDeadError(f"engine died: {_cause(exc)}", expert=self.name) from None
        except RayTaskError as exc:
            # the engine itself failed (vLLM's refusals of single requests come back as
            # their results): its state is unknown, so start afresh
            self.unload()
            raise GenerationError(_cause(exc), expert=self.name) from None
        return [
            GenerationResult.failed(r, RequestRejectedError(o["error"], expert=self.name))
            if "error" in o
            else GenerationResult(item_id=r.item_id, expert=self.name, **o)
            for r, o in zip(requests, outs, strict=True)
        ]

    def stream(self, request: GenerationRequest) -> Iterator[str | GenerationResult]:
        """The answer's text as the engine generates it, then its result."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        if self._actor is None:
            raise EngineDeadError("stream called on an unloaded expert", expert=self.name)
        stream_id = f"stream-{uuid.uuid4().hex}"
        actor = self._actor
        gen = actor.stream.options(num_returns="streaming").remote(
            self._payload([request])[0], stream_id
        )
        done = False
        try:
            for ref in gen:
                event = ray.get(ref)
                if "delta" in event:
                    yield event["delta"]
                elif "error" in event:
                    done = True  # never entered the engine
                    raise RequestRejectedError(event["error"], expert=self.name)
                else:
                    done = True
                    yield GenerationResult(
                        item_id=request.item_id, expert=self.name, **event["result"]
                    )
        except RayActorError as exc:
            self._actor = None
            raise EngineDeadError(f"engine died: {_cause(exc)}", expert=self.name) from None
        except RayTaskError as exc:  # the engine failed (refusals came as events): restart
            done = True
            self.unload()
            raise GenerationError(_cause(exc), expert=self.name) from None
        finally:
            if not done:  # the reader left (or failed): free the request's place
                with contextlib.suppress(Exception):
                    actor.abort.remote(stream_id)

    def expert_counts(self, requests: list[GenerationRequest]) -> list[list[int]]:
        """Tokens routed to each in-model expert, per MoE layer, answering `requests` as
        one batch (an MoE model; loaded)."""
        import ray

        if self._actor is None:
            raise EngineDeadError("expert_counts called on an unloaded expert", expert=self.name)
        counts: list[list[int]] = ray.get(self._actor.expert_counts.remote(self._payload(requests)))
        return counts

    def unload(self) -> None:
        import ray

        # cleared before the kill: a load it interrupts then knows why it failed
        actors, borrowed = (self._actor, self._starting), self._borrowed
        self._actor = self._starting = None
        self._borrowed = False
        for actor in actors:
            # no wait for Ray to free the name: the next load waits for it, if one comes
            if actor is not None and not borrowed:  # another job's: not ours to stop
                ray.kill(actor)
        if self._pg is not None:  # its node's room goes back to the cluster
            release(self._pg)
            self._pg = None

    def _wait_name_free(self, timeout_s: float = 30.0) -> None:
        """Ray frees an actor's name only once it is dead; a new load reuses the name."""
        import ray

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                stale = ray.get_actor(self.actor_name, namespace=self.cluster.namespace)
            except ValueError:
                return
            ray.kill(stale)
            time.sleep(0.1)


def _titled(expert: str) -> type[EngineHost]:
    """`EngineHost` under a class name of the expert's (`Expert_facts`): Ray titles an
    actor's process `ray::<class>`, so `ps`, `top` and the dashboard's process view name
    the expert, not the engine class they all share."""
    name = "Expert_" + re.sub(r"\W", "_", expert)
    return type(name, (EngineHost,), {"__module__": EngineHost.__module__})
