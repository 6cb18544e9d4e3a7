from evals.grading import extract_choice, is_correct, options_of


def test_last_answer_is_wins():
    assert extract_choice("(A) looks good but The answer is (C). Wait, the answer is (B).") == "B"


def test_falls_back_to_last_parenthesised_letter_then_none():
    assert extract_choice("I pick (D) over (A)") == "A"
    assert extract_choice("no idea") is None
    assert extract_choice(None) is None


def test_is_correct():
    assert is_correct("Paris. The answer is (A).", "A")
    assert not is_correct("Paris. The answer is (A).", "B")


Q = "Which city is the capital of Peru? The options are: (A) Bucharest (B) Lima (C) b (D) 12"


def test_stated_option_text_maps_to_its_letter():
    assert extract_choice("The answer is Lima.", Q) == "B"
    assert extract_choice("So the answer is: **lima**", Q) == "B"
    assert extract_choice("The answer is 12.", Q) == "D"
    # a lower-case option text is not a letter, an upper-case word is not a letter either
    assert extract_choice("The answer is b.", Q) == "C"
    assert extract_choice("The answer is Bucharest.", Q) == "A"
    assert is_correct("The answer is Lima.", "B", Q)


def test_stated_text_without_a_matching_option_is_no_choice():
    assert extract_choice("The answer is Cusco.", Q) is None
    assert extract_choice("The answer is Lima.") is None  # no question: nothing to match
    assert extract_choice("Lima, I think", Q) is None


def test_options_of_real_mmlu_pro_question():
    import json
    from pathlib import Path

    import pytest

    path = Path(__file__).parents[3] / "shared/data/symbolic-moe/MMLU_Pro_test.json"
    if not path.exists():
        pytest.skip(f"{path} is not on this machine")
    rows = json.loads(path.read_text())
    opts = options_of(rows[0]["question"])
    assert list(opts) == list("ABCDEFGHIJ")
    assert opts["J"].startswith("The reaction has reached a state of equilibrium")
