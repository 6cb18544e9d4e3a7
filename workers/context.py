"""Will an expert take a dataset's prompts? Checked before a run, not discovered in it.

An engine refuses a prompt longer than its context one request at a time (vLLM: the
prompt's tokens against `max_model_len`), so a dataset whose questions are long for an
expert turns into hundreds of failed calls. `overflow` counts them up front with the
expert's own tokenizer and chat template, where that costs no engine: a local model
folder (vLLM) or the fake's character limit. Other backends are not checked.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from orchestrator.config import ExpertConfig, FakeBackendConfig, VLLMBackendConfig
from workers.batch import GenerationRequest

Messages = list[dict[str, str]]


class Overflow(BaseModel):
    """The prompts an expert would refuse for length."""

    expert: str
    refused: int
    prompts: int
    limit: str  # its context, in its own unit ("512 tokens", "200 characters")
    longest: int


def overflow(expert: ExpertConfig, prompts: Sequence[Messages]) -> Overflow | None:
    """How many of `prompts` exceed `expert`'s context; None when none do, or when the
    limit cannot be known here (a remote model, a Hugging Face id not on this machine)."""
    spec = expert.backend
    if isinstance(spec, FakeBackendConfig):
        if spec.max_prompt_chars is None:
            return None
        # what the fake measures: the request's prompt text
        sizes = [
            len(GenerationRequest(item_id="check", expert=expert.name, messages=p).prompt_text())
            for p in prompts
        ]
        return _over(expert.name, sizes, spec.max_prompt_chars, "characters")
    if not isinstance(spec, VLLMBackendConfig) or spec.local_problems():
        return None
    folder = Path(spec.tokenizer or spec.model).expanduser()
    if not (folder / "config.json").is_file() and not (folder / "tokenizer.json").is_file():
        return None  # a hub id: its tokenizer is not here
    context = spec.engine_args.get("max_model_len") or _max_positions(Path(spec.model))
    if not context:
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    sizes = [_tokens(tok, p) for p in prompts]
    return _over(expert.name, sizes, int(context), "tokens")


def _tokens(tok: Any, messages: Messages) -> int:
    """The prompt's tokens as the engine sees it: through the chat template, if any."""
    if getattr(tok, "chat_template", None):
        out = tok.apply_chat_template(messages, add_generation_prompt=True)
        # transformers 5 returns the encoding (input_ids, attention_mask), 4 the ids
        ids = out["input_ids"] if hasattr(out, "keys") else out
        return len(ids)
    text = "\n".join(m["content"] for m in messages)
    return len(tok(text)["input_ids"])


def _max_positions(model: Path) -> int | None:
    try:
        cfg = json.loads((model.expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = cfg.get("max_position_embeddings")
    return int(value) if isinstance(value, int) else None


def _over(expert: str, sizes: list[int], limit: int, unit: str) -> Overflow | None:
    # both engines refuse a prompt longer than the limit (vLLM: prompt_len > max_model_len)
    refused = sum(s > limit for s in sizes)
    if not refused:
        return None
    return Overflow(
        expert=expert,
        refused=refused,
        prompts=len(sizes),
        limit=f"{limit} {unit}",
        longest=max(sizes),
    )
