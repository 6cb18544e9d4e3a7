"""The dtype a vLLM engine runs in on a CPU, where the config leaves it to us.

vLLM's `dtype="auto"` runs every model in 16 bits on a CPU: a bf16 model stays bf16, a
float32 one is cast down. That is the fast choice where the CPU computes bf16 itself
(AVX512-BF16 or AMX: Intel Sapphire Rapids, AMD Zen 4, for instance). Where it does
not (Ice Lake, Cascade Lake, AVX2-only CPUs) every bf16 product is widened to float32 and
narrowed back, and float32 weights run 2-2.5x faster. Measured on a 2-core Ice Lake
(family 6 model 106, no avx512_bf16, no AMX), vLLM 0.32, 16 chats x 64 tokens, in-process:
SmolLM2-135M 61-68 tokens/s in bf16 against 121-148 in float32, Gemma 3 270M 40-45
against 106-112.

So, on a CPU without native bf16 and with `engine_args.dtype` unset or "auto", the engine
runs in float32 if that fits: the weights take twice the memory (and the KV cache twice
the bytes for the same tokens, so `kv_cache_memory_bytes` is doubled with them to keep the
context and the batch the config sized), and both must fit the expert's
`resources.memory_gb` and the memory free on the node. A dtype the config names is kept as
it is; on a GPU vLLM decides. The decision is made inside the engine's actor, where the
CPU and the memory that count are.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: bytes per parameter of a checkpoint's saved dtype (config.json's `dtype`/`torch_dtype`)
_SAVED_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
#: what float32 may take of the memory free when the engine loads: the rest is the
#: engine's own (activations, the tokenizer, Python) and the other engines'
_FREE_SHARE = 0.8


@dataclass(frozen=True)
class DtypeChoice:
    """What an engine is started with, and why."""

    engine_args: dict[str, Any] = field(default_factory=dict)
    why: str = ""

    @property
    def dtype(self) -> str:
        return str(self.engine_args.get("dtype", "auto"))


def dtype_open(engine_args: dict[str, Any]) -> bool:
    """The config leaves the dtype to us: `engine_args.dtype` unset or "auto"."""
    return str(engine_args.get("dtype", "auto")).lower() == "auto"


def cpu_native_bf16() -> bool:
    """This CPU computes bf16 itself (AVX512-BF16 or AMX), as PyTorch's kernels see it.
    Not an x86 CPU: True, as measured nowhere else (vLLM's default is kept there)."""
    import torch

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def float32_bytes(model: str) -> int | None:
    """The weights' size in float32, from a local checkpoint folder's files and its saved
    dtype; None where it cannot be told (a hub id, a quantized or unreadable checkpoint)."""
    folder = Path(model).expanduser()
    try:
        config = json.loads((folder / "config.json").read_text())
        files = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt")]
        on_disk = sum(p.stat().st_size for p in files)
    except (OSError, ValueError):
        return None
    saved = config.get("dtype") or config.get("torch_dtype")
    if config.get("quantization_config") or saved not in _SAVED_BYTES or not on_disk:
        return None
    return on_disk * 4 // _SAVED_BYTES[saved]


def choose_dtype(
    model: str,
    engine_args: dict[str, Any],
    *,
    on_cpu: bool,
    native_bf16: bool,
    memory_limit: int | None,
    memory_free: int,
) -> DtypeChoice:
    """The engine arguments to start `model` with (see the module docstring)."""
    args = dict(engine_args)
    if not on_cpu:
        return DtypeChoice(args, "")
    if not dtype_open(args):
        return DtypeChoice(args, "as engine_args.dtype says")
    if native_bf16:
        return DtypeChoice(args, "vLLM's 16-bit default, native on this CPU")
    weights = float32_bytes(model)
    if weights is None:
        return DtypeChoice(
            args, "vLLM's default: the checkpoint's float32 size cannot be told, so kept"
        )
    kv = args.get("kv_cache_memory_bytes")
    kv32 = 2 * kv if isinstance(kv, int) else 0
    need = weights + kv32
    room = [("memory free now", int(_FREE_SHARE * memory_free))]
    if memory_limit is not None:
        room.append(("resources.memory_gb", memory_limit))
    short = [(what, have) for what, have in room if need > have]
    if short:
        what, have = short[0]
        return DtypeChoice(
            args,
            f"vLLM's 16-bit default, slow on this CPU (no native bf16): float32 would take "
            f"{need / 2**30:.1f} GiB, over {what} ({have / 2**30:.1f} GiB)",
        )
    args["dtype"] = "float32"
    if kv32:
        args["kv_cache_memory_bytes"] = kv32
    return DtypeChoice(
        args,
        "this CPU has no native bf16 (no AVX512-BF16, no AMX), where float32 runs 2-2.5x "
        "faster; set engine_args.dtype to choose",
    )


def choose_here(model: str, engine_args: dict[str, Any], memory_limit: int | None) -> DtypeChoice:
    """`choose_dtype` for the engine about to start in this process, on this node."""
    import psutil
    from vllm.platforms import current_platform

    on_cpu = current_platform.is_cpu()  # vLLM's CPU build, not a GPU, TPU or XPU one
    return choose_dtype(
        model,
        engine_args,
        on_cpu=on_cpu,
        native_bf16=on_cpu and cpu_native_bf16(),
        memory_limit=memory_limit,
        memory_free=psutil.virtual_memory().available,
    )
