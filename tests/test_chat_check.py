"""tools.chat_check's scoring: an accepted answer counts only as a whole word or number."""

import pytest

from tools.chat_check import QUESTIONS, correct, named_file

ANSWERS = dict(QUESTIONS)


@pytest.mark.parametrize("question,text,ok", [
    ("What is the freezing point of water in Celsius?", "The freezing point of water is 0 degrees Celsius.", True),
    ("What is the freezing point of water in Celsius?", "It is 0.0°C.", True),
    ("What is the freezing point of water in Celsius?", "The freezing point of water in Celsius is -18.0.", False),
    ("What is the freezing point of water in Celsius?", "Water boils at 100 degrees.", False),
    ("What is the boiling point of water in Celsius?", "approximately 100.0 degrees Celsius", True),
    ("What is the boiling point of water in Celsius?", "The boiling point of water is 1000 degrees.", False),
    ("How many legs does a spider have?", "A spider has eight legs.", True),
    ("How many legs does a spider have?", "A spider's legs are 18 inches long.", False),
    ("What is the capital of France?", "The capital of France is paris.", True),
    ("What is the largest planet in our solar system?", "Neptune is the largest.", False),
])
def test_scoring(question, text, ok):
    assert correct(text, ANSWERS[question]) is ok


def test_file_argument_needs_a_name_and_an_existing_file(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert named_file(f"F16={f}") == ("F16", f)
    with pytest.raises(Exception, match="NAME=FILE"):
        named_file(str(f))
    with pytest.raises(Exception, match="no such file"):
        named_file(f"F16={tmp_path / 'missing.gguf'}")
