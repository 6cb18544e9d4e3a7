from evals.grading import extract_choice, is_correct


def test_last_answer_is_wins():
    assert extract_choice("(A) looks good but The answer is (C). Wait, the answer is (B).") == "B"


def test_falls_back_to_last_parenthesised_letter_then_none():
    assert extract_choice("I pick (D) over (A)") == "A"
    assert extract_choice("no idea") is None
    assert extract_choice(None) is None


def test_is_correct():
    assert is_correct("Paris. The answer is (A).", "A")
    assert not is_correct("Paris. The answer is (A).", "B")
