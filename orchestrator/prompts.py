"""The prompts experts see, in one place (training and evaluation must agree)."""

from __future__ import annotations

MC_INSTRUCTION = (
    "The following is a multiple choice question. Think step by step and then finish your "
    'answer with "The answer is (X)" where X is the correct letter choice.'
)


def mc_messages(question: str) -> list[dict[str, str]]:
    """Zero-shot chain-of-thought prompt for a multiple-choice question (Symbolic-MoE)."""
    return [{"role": "user", "content": f"{MC_INSTRUCTION}\n\n{question}"}]


INT_INSTRUCTION = (
    "Solve the following problem. Think step by step and then finish your answer with "
    '"The answer is \\boxed{N}" where N is the final integer answer.'
)


def integer_messages(question: str) -> list[dict[str, str]]:
    """Zero-shot chain-of-thought prompt for a problem with an integer answer (AIME)."""
    return [{"role": "user", "content": f"{INT_INSTRUCTION}\n\n{question}"}]


def instruction_for(answer_type: str) -> str:
    if answer_type == "text":
        return "Answer the following."
    return INT_INSTRUCTION if answer_type == "integer" else MC_INSTRUCTION


def messages_for(question: str, answer_type: str = "choice") -> list[dict[str, str]]:
    """The expert prompt for a question of its answer type; a free-form ('text') question
    goes as it is, with no answer format to follow."""
    if answer_type == "text":
        return [{"role": "user", "content": question}]
    return integer_messages(question) if answer_type == "integer" else mc_messages(question)
