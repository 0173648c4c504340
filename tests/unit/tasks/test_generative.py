"""Answer extraction from a generation (no model needed)."""

import pytest

from qa_ray.tasks.generative import extract_answer


@pytest.mark.parametrize(
    "generated, expected",
    [
        (" Denver Broncos", "Denver Broncos"),
        (" Denver Broncos\nQuestion: who lost?\nAnswer: Panthers", "Denver Broncos"),
        ("\n\n", ""),
        (" unanswerable", ""),
        (" Unanswerable.", ""),
        (" unanswerable question marks", "unanswerable question marks"),
        ("  1,000 feet  ", "1,000 feet"),
    ],
)
def test_first_line_is_the_answer_and_the_no_answer_text_is_empty(generated, expected):
    assert extract_answer(generated, "unanswerable") == expected
