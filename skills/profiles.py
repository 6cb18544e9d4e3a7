"""Model profiles: what each expert is good at, per skill keyword (Symbolic-MoE).

A profile maps keyword -> integer: +1 for every graded question with that keyword the
expert answered right, -1 for every one it got wrong. Profiles are built from a
validation run, saved as versioned JSON with where they came from, and can be merged
with and updated from later graded results.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.errors import ConfigError
from orchestrator.files import atomic_write_text

PROFILE_VERSION = 1


class Provenance(BaseModel):
    """One batch of graded results that went into a profile."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(..., description="Dataset name, e.g. 'skillmix'.")
    split: str = Field(..., description="Split graded, e.g. 'validation'.")
    questions: int = Field(..., ge=0, description="Questions graded.")
    correct: int = Field(..., ge=0, description="Questions answered right.")
    accuracy: float = Field(..., ge=0.0, le=100.0, description="Percent right.")
    created: str = Field(..., description="When (UTC, ISO 8601).")


class ModelProfile(BaseModel):
    """One expert's skill scores and their provenance."""

    model_config = ConfigDict(extra="forbid")

    expert: str = Field(..., min_length=1, description="Expert name in the pool.")
    skills: dict[str, int] = Field(default_factory=dict, description="keyword -> score.")
    counts: dict[str, tuple[int, int]] = Field(
        default_factory=dict,
        description="keyword -> (answers right, answers graded): the evidence behind each "
        "score, from which `skills.estimates` estimates accuracy with its uncertainty.",
    )
    provenance: list[Provenance] = Field(default_factory=list, description="What built it.")

    @property
    def total(self) -> int:
        """The sum of the whole profile: the expert's global competence before scaling."""
        return sum(self.skills.values())

    def add(self, keywords: Iterable[str], correct: bool) -> None:
        for kw in dict.fromkeys(keywords):
            self.skills[kw] = self.skills.get(kw, 0) + (1 if correct else -1)
            right, graded = self.counts.get(kw, (0, 0))
            self.counts[kw] = (right + int(correct), graded + 1)

    def overall(self) -> tuple[int, int]:
        """(answers right, answers graded) over every batch that built the profile."""
        return (
            sum(p.correct for p in self.provenance),
            sum(p.questions for p in self.provenance),
        )


class ProfileSet(BaseModel):
    """Every expert's profile; the file `conclave profile` writes."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(PROFILE_VERSION, description="File format version.")
    profiles: dict[str, ModelProfile] = Field(default_factory=dict, description="By expert.")

    def update(
        self,
        graded: Iterable[tuple[str, list[str], bool]],
        dataset: str,
        split: str,
    ) -> ProfileSet:
        """Add graded (expert, keywords, correct) results; records one provenance entry per
        expert. Returns self."""
        counts: dict[str, list[int]] = {}
        for expert, keywords, correct in graded:
            prof = self.profiles.setdefault(expert, ModelProfile(expert=expert))
            prof.add(keywords, correct)
            c = counts.setdefault(expert, [0, 0])
            c[0] += 1
            c[1] += int(correct)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        for expert, (n, right) in counts.items():
            self.profiles[expert].provenance.append(
                Provenance(
                    dataset=dataset,
                    split=split,
                    questions=n,
                    correct=right,
                    accuracy=round(100 * right / n, 2) if n else 0.0,
                    created=now,
                )
            )
        return self

    def merge(self, other: ProfileSet) -> ProfileSet:
        """A new set with both sets' scores summed per expert and keyword."""
        out = self.model_copy(deep=True)
        for name, prof in other.profiles.items():
            mine = out.profiles.setdefault(name, ModelProfile(expert=name))
            for kw, v in prof.skills.items():
                mine.skills[kw] = mine.skills.get(kw, 0) + v
            for kw, (right, graded) in prof.counts.items():
                r0, g0 = mine.counts.get(kw, (0, 0))
                mine.counts[kw] = (r0 + right, g0 + graded)
            mine.provenance.extend(p.model_copy() for p in prof.provenance)
        return out

    def save(self, path: Path) -> Path:
        return atomic_write_text(path, self.model_dump_json(indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> ProfileSet:
        """Read a profiles file; a missing, malformed or newer-format file is a ConfigError
        naming the file and the problem."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read profiles {path}: {exc.strerror}; run `conclave profile` first"
            ) from exc
        except UnicodeDecodeError:
            raise ConfigError(
                f"profiles file {path} is not text (JSON); give the profiles.json "
                "`conclave profile` wrote, or rebuild it"
            ) from None
        try:
            data = cls.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise ConfigError(
                f"profiles file {path} is malformed at {where}: {first['msg']}; "
                "rebuild it with `conclave profile`"
            ) from None
        if data.version != PROFILE_VERSION:
            raise ConfigError(
                f"profiles file {path} has format version {data.version}; this Conclave reads "
                f"version {PROFILE_VERSION}; rebuild it with `conclave profile`"
            )
        for name, prof in data.profiles.items():
            if prof.expert != name:
                raise ConfigError(
                    f"profiles file {path}: entry {name!r} holds expert {prof.expert!r}"
                )
        return data
