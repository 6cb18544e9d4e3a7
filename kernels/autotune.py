"""How the MoE layer's `auto` backend picks a path: by measurement, cached per machine.

Which path is fastest depends on the CPU (vLLM's fused kernel is 2.5-2.9x the per-expert
loop on a CPU with AMX at 512 tokens, and 0.58x of it on an AMD EPYC without AMX), on the
layer's shapes and dtype, and on the token count. So `auto` does not guess: the first
time a layer meets a token count in a new bucket, it times every path that can run
(`MoELayer.paths`) on the layer's own weights at the bucket's token count, in paired
rounds (`time_paths`; a path 2x slower than the fastest in the first round is dropped
from the rest), and keeps the fastest; paths within 10% of it are timed again
in longer rounds first (`MoELayer._measure`), since a close call is what a noisy machine
flips. The choice is cached in memory and on disk
(`$CONCLAVE_CACHE/kernels/moe-auto.json`, written atomically) under the CPU's model,
family/model/stepping numbers and ISA flags, the shapes, the dtype and the bucket, so a
process measures a layer shape once per machine, not once per run. A CPU change (a VM
moved to another host) is a new key, so it is measured again: the numbers are in the key
because cloud VMs mask the name (Zen 3, 4 and 5 hosts all say "AMD EPYC", with the same
ISA flags where the choice differs).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

#: Token-count buckets: a call uses the choice measured at the nearest (in log scale).
BUCKETS = (1, 16, 128, 512, 2048)

#: Version of what a cached choice means: bump when a path changes, to measure again.
#: 2: "grouped:float32" joined the candidates; 3: "grouped:mkl", close calls;
#: 4: "grouped:native" (in place of "grouped:mkl" where it builds);
#: 5: "grouped:native-avx512bf16"; 6: the CPU's family/model/stepping in the key;
#: 7: "grouped:native-fma"; 8: "grouped:native-fma-bf16" (in its place for bfloat16);
#: 9: the FMA forms' 1-2 row tiles split k (faster at 1 token where AVX2 is the widest)
VERSION = 9


def bucket(tokens: int) -> int:
    """The bucket nearest `tokens` in log scale (a 300-token call uses 512's choice)."""
    return min(BUCKETS, key=lambda b: (abs(math.log(max(tokens, 1) / b)), b))


class CpuInfo(NamedTuple):
    #: the model name ("AMD EPYC", "Intel(R) Xeon(R) Platinum 8488C")
    model: str
    #: every flag it reports
    flags: frozenset[str]
    #: "family 25 model 17 stepping 1" on x86 (the name alone is masked on cloud VMs)
    ident: str = ""


@functools.cache
def cpuinfo(path: str = "/proc/cpuinfo") -> CpuInfo:
    """This machine's CPU model name, every flag it reports and its family/model/stepping
    numbers (from /proc/cpuinfo's first processor; off Linux, the platform's processor
    name and no flags)."""
    import platform

    model, flags = platform.processor() or platform.machine(), frozenset[str]()
    numbers: dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                if not line.strip() and (flags or numbers):
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name" and model == platform.machine():
                    model = value
                elif key in ("flags", "Features") and not flags:
                    flags = frozenset(value.split())
                elif key in ("cpu family", "model", "stepping", "CPU part", "CPU variant"):
                    numbers.setdefault(key.replace("cpu ", "").replace("CPU ", ""), value)
    except OSError:  # not Linux: the model from platform, no flags
        pass
    if model in ("", "x86_64"):
        model = platform.machine()
    ident = " ".join(f"{k} {v}" for k, v in numbers.items())
    return CpuInfo(model, flags, ident)


@functools.cache
def cpu() -> dict[str, Any]:
    """This machine's CPU model and numbers, and the ISA flags that decide between the
    paths."""
    info = cpuinfo()
    wanted = (
        *("amx_bf16", "amx_tile", "avx512_bf16", "avx_ne_convert", "avx512f", "avx2"),
        *("asimd", "sve", "bf16"),  # Arm
    )
    return {
        "model": info.model,
        "id": info.ident,
        "flags": [f for f in wanted if f in info.flags],
    }


def cpu_line() -> str:
    """'AMD EPYC, family 25 model 17 stepping 1 (avx512_bf16, avx512f, avx2; no AMX)' for
    reports."""
    c = cpu()
    amx = "" if "amx_bf16" in c["flags"] else "; no AMX"
    name = f"{c['model']}, {c['id']}" if c["id"] else c["model"]
    return f"{name} ({', '.join(c['flags']) or 'no ISA flags read'}{amx})"


class Choice(BaseModel):
    """What `auto` runs at one bucket, and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(..., description="The path: 'fused:amx', 'fused:vec', 'grouped', ...")
    bucket: int = Field(..., description="The token count it was measured at.")
    ms: dict[str, float] = Field(
        default_factory=dict, description="Each candidate's median ms per call there."
    )
    source: str = Field(..., description="'measured' now, 'cached' on disk, or 'only' path.")

    @property
    def why(self) -> str:
        if not self.ms:
            return f"the only path that can run here ({self.source})"
        ranked = sorted(self.ms.items(), key=lambda kv: kv[1])
        figures = ", ".join(f"{p} {ms:.3g} ms" for p, ms in ranked)
        return f"fastest at {self.bucket} tokens ({self.source}): {figures}"


def time_paths(
    fns: dict[str, Callable[[], Any]],
    rounds: int = 3,
    min_s: float = 0.02,
    min_reps: int = 3,
    on_round: Callable[[], Any] | None = None,
    drop: float | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each function in each round: a round times every function in
    a block of its own (median of repeated calls after a warm-up call), in a rotating
    order, so a machine whose speed drifts favours none (`conclave bench moe` uses it
    with more rounds, and `on_round` after each for its progress bar).

    With `drop`, a function slower than `drop` times the fastest in the first round is
    timed no more (its list keeps that one figure): it cannot win, and at 2,048 tokens
    timing `auto`'s hopeless candidates in every round took half of its measuring."""
    per: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for rnd in range(rounds):
        if rnd == 1 and drop is not None:
            fastest = min(per[k][0] for k in names)
            names = [k for k in names if per[k][0] <= drop * fastest]
        for k in names[rnd % len(names) :] + names[: rnd % len(names)]:
            fn = fns[k]
            fn()
            times: list[float] = []
            start = time.perf_counter()
            while len(times) < min_reps or (
                time.perf_counter() - start < min_s and len(times) < 200
            ):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            per[k].append(statistics.median(times))
        if on_round is not None:
            on_round()
    return per


class ChoiceCache:
    """Choices by key, in memory and in one JSON file (read once, written atomically)."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._mem: dict[str, Choice] | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        if self._path is None:
            from orchestrator.config.schema import default_cache_dir

            self._path = default_cache_dir() / "kernels" / "moe-auto.json"
        return self._path

    def _read(self, warn: bool = False) -> dict[str, Choice]:
        """The file's choices ({} where there is none, it is unreadable, or of another
        version)."""
        try:
            raw = json.loads(self.path.read_text())
            if raw.get("version") == VERSION:
                return {k: Choice(**v) for k, v in raw.get("choices", {}).items()}
        except (OSError, ValueError, TypeError) as exc:  # none yet, or unreadable
            if warn and self.path.exists():
                log.warning("ignoring %s (%s): measuring again", self.path, exc)
        return {}

    def _load(self) -> dict[str, Choice]:
        if self._mem is None:
            self._mem = self._read(warn=True)
        return self._mem

    def get(self, key: str) -> Choice | None:
        with self._lock:
            return self._load().get(key)

    def put(self, key: str, choice: Choice) -> None:
        from orchestrator.files import atomic_write_json

        with self._lock:
            mem = self._load()
            mem[key] = choice
            # another process (a second engine on the machine) may have saved choices
            # since this one read the file: keep them rather than write over them
            self._mem = mem = {**self._read(), **mem}
            data = {"version": VERSION, "choices": {k: c.model_dump() for k, c in mem.items()}}
            try:
                atomic_write_json(self.path, data)
            except OSError as exc:  # a read-only cache: keep it for this process
                log.warning("cannot save the MoE path choice to %s: %s", self.path, exc)

    def clear(self) -> None:
        with self._lock:
            self._mem = {}
            self.path.unlink(missing_ok=True)


#: The process's cache (tests give layers one of their own).
CHOICES = ChoiceCache()
