import pytest

from charlm.errors import CharLMError
from charlm.vocab import EOS_ID, UNK_ID, Vocab, detect_script, is_han, normalize


def test_order_is_by_frequency_with_specials_first():
    v = Vocab.from_text("\n春春春风风花\n")
    assert v.chars[:2] == ["<unk>", "\n"]
    assert v.chars[2:] == ["春", "风", "花"]
    assert v.encode("春\n") == [2, EOS_ID]


def test_round_trip_of_in_vocabulary_text():
    text = "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n"
    v = Vocab.from_text(text)
    assert v.decode(v.encode(text)) == text


def test_unknown_characters_map_to_unk_and_are_named():
    v = Vocab.from_text("春风")
    assert v.encode("春雨") == [v.chars.index("春"), UNK_ID]
    assert v.unknown("春雨雪雨") == ["雨", "雪"]


def test_min_count_drops_rare_characters():
    v = Vocab.from_text("春春风", min_count=2)
    assert "风" not in v and "春" in v


def test_json_round_trip_and_version_check():
    v = Vocab.from_text("天地玄黄", script="simplified")
    again = Vocab.from_json(v.to_json())
    assert again == v and again.script == "simplified"
    bad = v.to_dict() | {"format_version": 99}
    with pytest.raises(CharLMError, match="version"):
        Vocab.from_dict(bad)


def test_traditional_prompt_maps_to_simplified_vocabulary():
    assert normalize("天地悠悠過客", "simplified") == "天地悠悠过客"
    assert normalize("天地悠悠过客", "traditional") == "天地悠悠過客"


def test_half_width_punctuation_between_han_becomes_full_width():
    assert normalize("春眠不觉晓,处处闻啼鸟.") == "春眠不觉晓，处处闻啼鸟。"
    # ASCII text keeps its punctuation
    assert normalize("a,b. 1.5") == "a,b. 1.5"


def test_normalisation_is_nfc_not_nfkc():
    # NFKC would turn full-width punctuation into ASCII; NFC keeps it
    assert normalize("，。！？") == "，。！？"
    assert normalize("e\u0301") == "\u00e9"


def test_detect_script():
    assert detect_script("床前明月光，疑是地上霜。举头望明月，低头思故乡。" * 3) == "simplified"
    assert detect_script("床前明月光，疑是地上霜。舉頭望明月，低頭思故鄉。" * 3) == "traditional"
    assert detect_script("hello world " * 10) == "none"


def test_is_han():
    assert is_han("春") and is_han("𠀀") and not is_han("，") and not is_han("a")
