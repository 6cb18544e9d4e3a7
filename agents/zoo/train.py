"""Deterministic training of the zoo's specialist experts.

A specialist is a small Llama- or Mixtral-style causal LM trained from scratch on the
skillmix train split of its own categories (plus a small share of the others). It answers
"The answer is <option text>." and grading maps the text to its option's letter
(`evals.grading`): pointing from a value to the letter in front of it in the options is an
induction skill that a model this small does not learn in a few minutes on two cores (we
measured letter accuracy at chance after 3,000 steps), while the skills themselves are
learnt in a few hundred. It is saved with the zoo tokenizer as a plain Hugging Face folder
that vLLM serves.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from evals.skillmix import CATEGORIES, Question
from orchestrator.answers import options_of
from orchestrator.prompts import mc_messages

#: Bump when a change here makes the same spec train a different model: the zoo rebuilds.
TRAINING_VERSION = 3


@dataclass(frozen=True)
class TrainSpec:
    """What one trained expert is: its skills, shape and training budget."""

    name: str
    categories: tuple[str, ...]
    other_share: float = 0.1  # share of examples drawn from the other categories
    arch: Literal["llama", "mixtral"] = "llama"
    hidden: int = 128
    layers: int = 4
    experts: int = 4  # mixtral only
    steps: int = 600
    batch: int = 32
    lr: float = 3e-3
    seed: int = 0
    roles: tuple[str, ...] = field(default=("expert",))
    #: "answer": answers questions; "keywords": names a question's skills (the keyword
    #: model of Symbolic-MoE), taught from SKILL_KEYWORDS
    task: Literal["answer", "keywords"] = "answer"


#: What a keyword model says each skillmix skill is: the words a person would use, with
#: overlaps between skills ("letters") as real keywords have. The keyword model learns to
#: name 2-3 of them for a question; the router learns from validation which experts do well
#: on which, exactly as with an instruct LLM's keywords.
SKILL_KEYWORDS: dict[str, tuple[str, ...]] = {
    "arithmetic": ("arithmetic", "addition", "mental math", "numbers"),
    "strings": ("string reversal", "spelling", "letters", "word puzzles"),
    "counting": ("letter counting", "counting", "letters", "spelling"),
    "geography": ("geography", "capital cities", "countries", "world knowledge"),
    "chemistry": ("chemistry", "chemical symbols", "periodic table", "elements"),
    "dates": ("calendar", "months", "date arithmetic", "time"),
    "units": ("unit conversion", "metric system", "measurement", "numbers"),
    "alphabet": ("alphabet", "letter order", "sequences", "letters"),
}


def answer_text(q: Question) -> str:
    """The target completion: the right option's text."""
    return f"The answer is {options_of(q.question)[q.gold_answer]}."


def keywords_text(q: Question, rng: random.Random) -> str:
    """A keyword model's target: 2-3 of its skill's keywords, in a random order."""
    words = rng.sample(SKILL_KEYWORDS[q.category], rng.randint(2, 3))
    return "Keywords: " + ", ".join(words)


def train_expert(
    spec: TrainSpec,
    train_rows: list[Question],
    tokenizer_dir: Path,
    out_dir: Path,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, object]:
    """Train `spec` on `train_rows` and save model + tokenizer to `out_dir` (not atomic:
    the caller builds into a temporary folder and renames it)."""
    import torch
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        MixtralConfig,
        MixtralForCausalLM,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars report this work

    unknown = set(spec.categories) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"{spec.name}: unknown categories {sorted(unknown)}")
    torch.manual_seed(spec.seed)
    rng = random.Random(f"train:{spec.name}:{spec.seed}")
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    own = [q for q in train_rows if q.category in spec.categories]
    rest = [q for q in train_rows if q.category not in spec.categories]

    if spec.task == "keywords":
        from agents.zoo.tokenizer import KEYWORDS_CHAT_TEMPLATE
        from orchestrator.config import KeywordSettings

        tok.chat_template = KEYWORDS_CHAT_TEMPLATE
        prompt = KeywordSettings().prompt
        own, rest = own + rest, []  # every skill: it names the skills of any question

    def messages(q: Question) -> list[dict[str, str]]:
        if spec.task == "keywords":
            return [{"role": "user", "content": prompt.format(question=q.question)}]
        return mc_messages(q.question)

    def target(q: Question) -> str:
        return keywords_text(q, rng) if spec.task == "keywords" else answer_text(q)

    def encode(rows: list[Question]) -> list[tuple[list[int], list[int]]]:
        if not rows:
            return []
        prompts = [
            tok.apply_chat_template(messages(q), tokenize=False, add_generation_prompt=True)
            for q in rows
        ]
        answers = [target(q) + tok.eos_token for q in rows]
        p = tok(prompts, add_special_tokens=False)["input_ids"]
        a = tok(answers, add_special_tokens=False)["input_ids"]
        return list(zip(p, a, strict=True))

    own_enc = encode(own)
    # the other categories are a small share: a sample of them is plenty
    rest_enc = encode(random.Random(spec.seed).sample(rest, min(len(rest), 2000)))
    common = dict(
        vocab_size=len(tok),
        hidden_size=spec.hidden,
        intermediate_size=spec.hidden * 2,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.hidden // 32,
        num_key_value_heads=spec.hidden // 32,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    if spec.arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = MixtralForCausalLM(
            MixtralConfig(**common, num_local_experts=spec.experts, num_experts_per_tok=2)
        )
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, spec.steps // 20)
    loss_val = float("nan")
    model.train()
    for step in range(spec.steps):
        lr = (
            spec.lr
            * min(1.0, (step + 1) / warmup)
            * 0.5
            * (1 + math.cos(math.pi * step / spec.steps))
        )
        for g in opt.param_groups:
            g["lr"] = lr
        batch = [
            rest_enc[rng.randrange(len(rest_enc))]
            if rest_enc and rng.random() < spec.other_share
            else own_enc[rng.randrange(len(own_enc))]
            for _ in range(spec.batch)
        ]
        width = max(len(p) + len(a) for p, a in batch)
        ids = torch.full((spec.batch, width), tok.pad_token_id)
        labels = torch.full((spec.batch, width), -100)
        mask = torch.zeros((spec.batch, width), dtype=torch.long)
        for i, (p, a) in enumerate(batch):
            seq = p + a
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
            labels[i, len(p) : len(seq)] = torch.tensor(a)
        # float32: on CPU, bfloat16 autocast is slower for matrices this small
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_val = float(loss.item())
        if on_step is not None:
            on_step(step, loss_val)
    model.to(torch.bfloat16).save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "final_loss": round(loss_val, 4),
        "train_examples": len(own) + len(rest),
    }
