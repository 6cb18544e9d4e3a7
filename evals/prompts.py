"""The prompts experts see, in one place (training and evaluation must agree)."""

from __future__ import annotations

MC_INSTRUCTION = (
    "The following is a multiple choice question. Think step by step and then finish your "
    'answer with "The answer is (X)" where X is the correct letter choice.'
)


def mc_messages(question: str) -> list[dict[str, str]]:
    """Zero-shot chain-of-thought prompt for a multiple-choice question (Symbolic-MoE)."""
    return [{"role": "user", "content": f"{MC_INSTRUCTION}\n\n{question}"}]
