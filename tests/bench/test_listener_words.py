"""How the benchmarks' listener reads a recogniser's text before it is scored against the words meant."""

from talkstream.bench.listener import normalise_words, wer


def test_spelled_letters_read_the_same_however_whisper_writes_them():
    want = normalise_words("cup is spelled c u p.")
    assert normalise_words("Cup is spelled CUP.") == want
    assert normalise_words("Cup is spelled C-U-P.") == want
    assert normalise_words("Cup is spelled cup.") != want  # the word said whole is not the letters


def test_a_text_all_in_capitals_is_words():
    assert normalise_words("THE ENTIRE RISK IS WITH YOU.") == "the entire risk is with you"


def test_numbers_and_punctuation_do_not_count_as_errors():
    assert normalise_words("7 times 11 is 77.") == "seven times eleven is seventy seven"
    assert wer(["two times seven is fourteen."], ["2 times 7 is 14."]) == 0.0
    assert wer(["two times seven is fourteen."], ["T times 7 is 14."]) == 0.2
