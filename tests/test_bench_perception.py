"""The perception bench's WER scoring on hand-computed cases."""

from sentistream.perception.wer import edit_distance, normalise, wer


def test_normalise_expands_contractions_on_both_sides():
    assert normalise("I DON'T think it's GREAT.") == ["i", "do", "not", "think", "it", "is", "great"]
    assert normalise("i do not think it is great") == ["i", "do", "not", "think", "it", "is", "great"]
    assert normalise("We can't, we won't") == ["we", "can", "not", "we", "will", "not"]


def test_edit_distance_and_wer_by_hand():
    assert edit_distance(["a", "b", "c"], ["a", "x", "c", "d"]) == 2  # one substitution, one insertion
    assert edit_distance([], ["a"]) == 1
    # 2 errors over 5 + 2 reference words
    assert wer(["the movie was really good", "so bad"], ["the movie was good", "so sad"]) == 2 / 7
