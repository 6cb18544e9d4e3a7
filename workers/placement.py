"""Placing an expert's actor: reserve room on one node first, or say why there is none.

An actor Ray cannot place waits in PENDING_CREATION forever, silently. So the engine's
actor goes into a placement group of one bundle (its CPUs, GPUs, custom resources and
accelerator type, on a node with its labels), and the pool waits for that reservation at
most `cluster.placement_timeout_s`: past it the load fails naming what the expert needs
and the most any node has free. Ray's own scheduler decides the node (per-node fit,
labels), not our arithmetic over the cluster's totals.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from orchestrator.config import Resources
from orchestrator.errors import ModelLoadError

log = logging.getLogger(__name__)


def bundle(res: Resources) -> dict[str, float]:
    """The resources one node must have free for the actor (zero amounts left out, as
    Ray's bundles refuse them)."""
    need = {"CPU": res.num_cpus, "GPU": res.num_gpus, **res.custom}
    if res.accelerator_type:
        # Ray's accelerator_type option is this resource, which nodes with one carry
        need[f"accelerator_type:{res.accelerator_type}"] = 0.001
    return {k: v for k, v in need.items() if v > 0}


def reserve(expert: str, res: Resources, timeout_s: float, name: str) -> Any:
    """A ready placement group (`name`: the actor's, unique on the cluster) for
    `expert`'s actor; ModelLoadError naming what it needs and what the cluster has free
    when none is ready within `timeout_s`."""
    from ray.util.placement_group import placement_group, remove_placement_group

    need = bundle(res)
    pg = placement_group(
        [need],
        strategy="STRICT_PACK",
        name=name,
        bundle_label_selector=[dict(res.node_labels)] if res.node_labels else None,
    )
    if pg.wait(timeout_seconds=timeout_s):
        return pg
    remove_placement_group(pg)
    labels = f" on a node labelled {res.node_labels}" if res.node_labels else ""
    raise ModelLoadError(
        f"cannot be placed: no node had {_fmt(need)} free{labels} within {timeout_s:g} s "
        f"({free_nodes()}); lower its resources, free a node (other jobs' experts hold "
        "theirs), or add one (cluster.placement_timeout_s waits longer)",
        expert=expert,
    )


#: how long freeing a placement group may wait for Ray's GCS: one that stops with this
#: process (the process group's SIGTERM of `systemctl stop` or `kill -- -PGID` reaches it
#: too) stops answering, and Ray's own call would wait 60 s, then end the process
RELEASE_WAIT_S = 5.0

#: set while a removal is still unanswered: the next ones do not wait (closing a pool of
#: nine experts waits once, not nine times); cleared when Ray answers one
_unanswered = threading.Event()


def release(pg: Any, wait_s: float = RELEASE_WAIT_S) -> None:
    """Give `pg`'s room back to the cluster, waiting at most `wait_s` for Ray to answer
    (none if an earlier removal is still unanswered): past it the removal goes on in the
    background, and a Ray that is stopping frees the group with the job."""
    from ray.util.placement_group import remove_placement_group

    def remove() -> None:
        try:
            remove_placement_group(pg)
        except Exception as exc:  # already gone with its job: nothing left to free
            log.debug("placement group not removed: %s", exc)
        _unanswered.clear()

    worker = threading.Thread(target=remove, name="release-placement", daemon=True)
    worker.start()
    worker.join(0 if _unanswered.is_set() else wait_s)
    if worker.is_alive() and not _unanswered.is_set():
        _unanswered.set()
        log.warning(
            "Ray has not freed a placement group within %g s (is it stopping too?); "
            "not waiting for it, nor for the next ones until it answers",
            wait_s,
        )


def free_nodes() -> str:
    """What each node has free now, the roomiest first (for an error message)."""
    try:
        from ray._private.state import available_resources_per_node

        per_node = list(available_resources_per_node().values())
    except Exception:  # a private API: fall back to the cluster's total
        import ray

        per_node = [ray.available_resources()]
    if not per_node:
        return "no node has anything free"
    per_node.sort(key=lambda r: (-r.get("GPU", 0.0), -r.get("CPU", 0.0)))
    shown = [_fmt(_visible(r)) or "nothing" for r in per_node[:3]]
    more = f", and {len(per_node) - 3} more" if len(per_node) > 3 else ""
    return f"free now: largest node {shown[0]}" + (
        f"; then {', '.join(shown[1:])}{more}" if len(shown) > 1 else ""
    )


def _visible(res: dict[str, float]) -> dict[str, float]:
    """A node's resources without Ray's bookkeeping ones (node ids, memory, groups)."""
    return {
        k: v
        for k, v in res.items()
        if v > 0
        and not k.startswith(("node:", "memory", "object_store_memory"))
        and "_group_" not in k
    }


def _fmt(res: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(res.items()))
