"""The embedded default: the zoo as the pool when no config file is given.

Every front end resolves its config the same way: the config file's pool if one is
given, else the zoo under `<cache>/zoo` (or a chosen folder), built first if missing or
stale. Messages go through `on_event`, so a CLI prints them and a library caller may not.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agents.zoo.build import PROFILES, ZooBuilder, ZooManifest, load_manifest
from agents.zoo.evaluate import zoo_config
from orchestrator.config import ConclaveConfig, default_cache_dir, load_config
from orchestrator.errors import ConclaveError


def zoo_root(directory: Path | None = None) -> Path:
    """The zoo's folder: `directory`, or `<cache>/zoo`."""
    return directory or default_cache_dir() / "zoo"


def build_zoo(
    root: Path, profile: str, seed: int = 0, *, progress: bool = True
) -> tuple[ZooManifest, list[str]]:
    """Build (or verify) a zoo profile under `root`, with a progress bar per model on
    stderr; returns the manifest and the names of the models built now."""
    from rich.console import Console
    from rich.progress import TaskID, TextColumn

    from orchestrator.progress import progress_bar

    ZooBuilder(root, profile, seed).check_root()  # a bad --dir or profile: no bars first
    bar = progress_bar(
        24, TextColumn("{task.fields[status]}"), console=Console(stderr=True), disable=not progress
    )
    with bar:
        tasks: dict[str, TaskID] = {}
        for spec in PROFILES.get(profile, []):
            total = getattr(spec, "steps", None)
            tasks[spec.name] = bar.add_task(spec.name, total=total, status="", start=False)

        def on_event(name: str, what: str) -> None:
            bar.start_task(tasks[name])
            if what in ("built", "up to date"):
                bar.update(tasks[name], status=what, completed=1, total=1)
            else:
                bar.update(tasks[name], status=what)

        def on_step(name: str, step: int, total: int) -> None:
            bar.update(tasks[name], completed=step, total=total)

        return ZooBuilder(root, profile, seed, on_event, on_step).build()


def resolve_config(
    config_path: Path | None,
    zoo: str = "full",
    zoo_dir: Path | None = None,
    *,
    on_event: Callable[[str], object] = print,
    progress: bool = True,
) -> ConclaveConfig:
    """The config file's pool, or the embedded zoo's (profile `zoo`, under `zoo_dir`),
    built first if missing or stale; `on_event` hears which models were built."""
    if config_path is not None:
        return load_config(config_path)
    root = zoo_root(zoo_dir)
    manifest, built = build_zoo(root, zoo, progress=progress)
    if built:
        on_event(f"built zoo models {', '.join(built)} in {root}")
    # the profile's models only: a zoo folder that also holds another profile's (a
    # `--zoo reduced` run into the same folder) does not change the embedded default
    return zoo_config(root, manifest, [s.name for s in PROFILES[zoo]])


def built_zoo(zoo_dir: Path | None, hint: str = "run `conclave zoo build` first") -> ZooManifest:
    """The manifest of the zoo already built under `zoo_dir` (builds nothing); raises
    `ConclaveError` ending in `hint` when there is none."""
    root = zoo_root(zoo_dir)
    manifest = load_manifest(root, seed=0)
    if not manifest.entries:
        raise ConclaveError(f"no zoo at {root}; {hint}")
    return manifest


def existing_config(
    config_path: Path | None, zoo_dir: Path | None
) -> tuple[ConclaveConfig, ZooManifest | None]:
    """The config file's pool, or the already built zoo's with its manifest (what each
    model was built from); unlike `resolve_config`, builds nothing."""
    if config_path is not None:
        return load_config(config_path), None
    manifest = built_zoo(zoo_dir, "run `conclave zoo build`, or pass --config FILE")
    return zoo_config(zoo_root(zoo_dir), manifest), manifest


def zoo_moe_model(zoo_dir: Path | None) -> Path:
    """The folder of the zoo's MoE (Mixtral-style) model."""
    root = zoo_root(zoo_dir)
    manifest = load_manifest(root, seed=0)
    moe = [n for n, e in manifest.entries.items() if "Mixtral" in (e.architecture or "")]
    if not moe:
        raise ConclaveError(
            f"no MoE model in the zoo at {root}: run `conclave zoo build`, or pass --model"
        )
    return root / moe[0]
