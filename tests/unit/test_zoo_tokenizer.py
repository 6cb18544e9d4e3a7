from __future__ import annotations

import pytest

from agents.zoo.tokenizer import build_word_tokenizer
from evals.skillmix import generate


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tok")
    rows = generate("train", 300)
    build_word_tokenizer((r.question for r in rows), path, min_count=5)
    return AutoTokenizer.from_pretrained(str(path))


def test_round_trips_every_question(tok):
    for r in generate("test", 20):
        assert tok.decode(tok(r.question)["input_ids"]) == r.question


def test_words_are_single_tokens_and_digits_and_rare_strings_are_characters(tok):
    pieces = tok.convert_ids_to_tokens(tok("The capital of Peru is Lima, 47 'KOBAZE'")["input_ids"])
    # a space is glued to the word after it: half the tokens of a space per token
    assert "\u2581capital" in pieces and "\u2581Lima" in pieces and " " not in pieces
    assert pieces[pieces.index("4") + 1] == "7"  # one digit per token
    quoted = pieces[pieces.index("'") + 1 : len(pieces) - 1]
    assert quoted == list("KOBAZE")


def test_answers_decode_with_their_spaces(tok):
    ids = tok("Which city is the capital of", add_special_tokens=False)["input_ids"]
    assert len(ids) == 6
    assert tok.decode(ids) == "Which city is the capital of"


def test_chat_template_and_special_tokens(tok):
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is 1 + 2?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[0] == "<|im_start|>"
    assert tok.decode(ids) == text
