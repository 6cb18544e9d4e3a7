"""Building the grouped MoE kernel (`csrc/grouped_ffn.c`) on the user's machine.

It is compiled, not shipped: `-march=native` for the CPU it runs on, linked against the
libtorch_cpu (MKL's CBLAS) and libgomp of the PyTorch that loads it, so there is no
second copy of either. The build needs a C compiler (`$CC`, else `cc`/`gcc`): about a
second, once per machine and PyTorch, cached under `$CONCLAVE_CACHE/kernels/` per source,
flags, PyTorch, compiler and CPU (written to a temporary name and renamed, so a
half-written library is never loaded; a cache it cannot write gets a build for the
process alone). `kernels.native` loads and checks what this builds.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "grouped_ffn.c"


class Unavailable(Exception):
    """Why the kernel cannot be built or used here (its message says so)."""


def _torch_lib() -> Path:
    lib = Path(torch.__file__).parent / "lib"
    if not (lib / "libtorch_cpu.so").exists():
        raise Unavailable(f"no libtorch_cpu.so in {lib} (this PyTorch is not a Linux CPU build)")
    if not torch.backends.mkl.is_available():
        raise Unavailable("this PyTorch was built without MKL (its x86 Linux wheels have it)")
    try:
        ctypes.CDLL(str(lib / "libtorch_cpu.so")).cblas_sgemm_compute  # noqa: B018
    except (OSError, AttributeError) as exc:
        raise Unavailable(f"libtorch_cpu has no cblas_sgemm_compute ({exc})") from None
    return lib


def compiler() -> str | None:
    """The C compiler the kernel is built with: `$CC`, else `cc` or `gcc` on the PATH."""
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc)
    return shutil.which("cc") or shutil.which("gcc")


def _flags(lib: Path) -> list[str]:
    """Compiler flags. OpenMP threads only on PyTorch's own libgomp (its x86 wheels ship
    one), never a second OpenMP runtime beside PyTorch's: else one thread, vectorized."""
    flags = ["-O3", "-march=native", "-fno-trapping-math", "-shared", "-fPIC"]
    if platform.machine() in ("x86_64", "AMD64"):
        # 512-bit vectors where the CPU has them: the SiLU pass ran 1.3x faster than with
        # GCC's default 256 on an AVX-512 Xeon (model 106); ignored without AVX-512
        flags.append("-mprefer-vector-width=512")
    openmp = (lib / "libgomp.so.1").exists() and "OpenMP" in torch.__config__.parallel_info()
    flags.append("-fopenmp" if openmp else "-fopenmp-simd")
    link = [f"-L{lib}", "-ltorch_cpu", f"-Wl,-rpath,{lib}"]
    return flags + link


def _cpu_signature() -> str:
    """The CPU's model, numbers and every flag it reports: `-march=native` code is for
    exactly these (a library built on an AVX-512 host would die on one without it, and
    the numbers pick GCC's tuning where a masked name and the flags match)."""
    from kernels.autotune import cpuinfo

    info = cpuinfo()
    return f"{info.model}\n{info.ident}\n{' '.join(sorted(info.flags))}"


def _cache_dir() -> Path:
    from orchestrator.config.schema import default_cache_dir

    return default_cache_dir() / "kernels"


class Built(NamedTuple):
    path: Path
    #: built for this process only (a cache it cannot write): removed once loaded
    own: bool = False
    #: found in the cache, not built now
    cached: bool = False


def build(again: bool = False) -> Built:
    """The library, built now or found in the cache (for this source, flags, PyTorch,
    compiler and CPU); `again`: built anew over what the cache holds."""
    lib = _torch_lib()
    cc = compiler()
    if cc is None:
        given = os.environ.get("CC")
        named = f"CC={given!r} is not a program on the PATH; " if given else ""
        raise Unavailable(
            f"no C compiler found ({named}set CC, or install gcc: the kernel is built on first use)"
        )
    first = _flags(lib)
    tries = [first]
    if "-fopenmp" in first:  # a compiler without OpenMP (clang without libomp): one thread
        tries.append([f if f != "-fopenmp" else "-fopenmp-simd" for f in first])
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    source, cpu = SOURCE.read_text(), _cpu_signature()
    failed: Unavailable | None = None
    for flags in tries:
        parts = [source, " ".join(flags), torch.__version__, version.stdout, cpu]
        key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
        target = _cache_dir() / f"grouped_ffn-{key}.so"
        if target.exists() and not again:
            return Built(target, cached=True)
        try:
            return _compile(cc, flags, target)
        except Unavailable as exc:
            log.info("building the grouped MoE kernel with %s: %s", " ".join(flags[:6]), exc)
            failed = failed or exc
    assert failed is not None
    raise failed


def _compile(cc: str, flags: list[str], target: Path) -> Built:
    own = False
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    except OSError:  # a read-only cache: build for this process only
        own = True
        target = Path(tempfile.mkdtemp(prefix="conclave-kernel-")) / target.name
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [cc, str(SOURCE), "-o", tmp, *flags], capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise Unavailable(f"{cc} could not build {SOURCE.name}: {' | '.join(tail)}")
        os.replace(tmp, target)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{cc} took over 300 s to build {SOURCE.name}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if own and not target.exists():
            shutil.rmtree(target.parent, ignore_errors=True)
    log.info("built the grouped MoE kernel in %.1f s: %s", time.perf_counter() - start, target)
    return Built(target, own)
