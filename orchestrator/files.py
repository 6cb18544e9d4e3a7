"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a cache or report is meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def writable_dir(path: Path, what: str, fix: str) -> Path:
    """`path`, created if missing and checked writable with a probe file, before work
    whose result goes there (minutes of profiling). Raises `ConfigError` naming `what`,
    the path, why, and `fix`."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe."):
            pass
    except OSError as exc:  # a file there, a read-only or missing parent, a full disk
        raise ConfigError(
            f"{what} {path}: cannot write there ({exc.strerror or exc}); {fix}"
        ) from None
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_jsonl(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Whole lines of an append-only JSON-lines file written by `append_jsonl`. A partial
    last line (a write killed mid-way) is left out, and with `repair` (the writer, before
    it appends) cut from the file, so the next append starts on a line of its own.

    Anything else that is not a JSON object per line is a `ConfigError` naming the file
    and line, with the file left as it was: a bad line in the middle, or another file
    given by mistake (`--log conclave.yaml`), had been cut to its last good line, which
    for a YAML file was nothing."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    rows, good = [], 0
    for n, line in enumerate(raw.splitlines(keepends=True), 1):
        if not line.strip():  # a blank line (an edit by hand): no row, nothing wrong
            good += len(line)
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            # every row `append_jsonl` writes starts with "{": a killed write leaves such
            # a start without its newline, and only as the last line
            if not line.endswith(b"\n") and line.startswith(b"{"):
                break
            raise ConfigError(
                f"{path}: line {n} is not JSON ({exc}); is it the right file? It was left "
                "as it is: fix or remove that line, or give another file"
            ) from None
        if not isinstance(row, dict):
            raise ConfigError(
                f"{path}: line {n} is {type(row).__name__}, not a JSON object; is it the "
                "right file? It was left as it is"
            )
        if not line.endswith(b"\n"):  # whole, but the newline was not written: partial
            break
        rows.append(row)
        good += len(line)
    if repair and good != len(raw):
        atomic_write_bytes(path, raw[:good])
    return rows


def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append `rows` with one write, fsynced: a crash leaves whole lines and at most one
    partial last line, which `read_jsonl` drops."""
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
