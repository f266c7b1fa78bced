import json

from charlm.corpora import as_quatrain, build, build_ci, clean_body


def test_notes_are_removed_and_restorations_kept():
    assert clean_body(["闌風長雨（一作「東風細雨」）秋紛紛，", "四海八荒同一雲。"]) == "闌風長雨秋紛紛，四海八荒同一雲。"
    assert clean_body(["[爽]節在重九，物華新雨餘。"]) == "爽節在重九，物華新雨餘。"
    assert clean_body(["妖韶援綠{𥫗/戢}。"]) == "妖韶援綠□。"
    assert clean_body(["笑點頭。（〖1〗這首詩（注）雖不見）"]) == "笑點頭。"


def test_quatrains_are_recognised_and_repunctuated():
    assert as_quatrain("床前明月光，疑是地上霜，举头望明月，低头思故乡。") == "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
    assert as_quatrain("朝辞白帝彩云间，千里江陵一日还。两岸猿声啼不住，轻舟已过万重山。")
    assert as_quatrain("白日依山尽，黄河入海流。") is None  # two lines
    assert as_quatrain("白日依山尽，黄河入海流。欲穷千里目，更上一层楼楼。") is None  # uneven
    assert as_quatrain("白日依山□，黄河入海流。欲穷千里目，更上一层楼。") is None  # missing character


def test_build_from_a_package_folder(tmp_path):
    pkg = tmp_path / "package" / "dist"
    (pkg / "quantangshi").mkdir(parents=True)
    (pkg / "mengxue").mkdir(parents=True)
    poems = [
        {"paragraphs": ["床前明月光，疑是地上霜。", "舉頭望明月，低頭思故鄉。"]},
        {"paragraphs": ["床前明月光，疑是地上霜。", "舉頭望明月，低頭思故鄉。"]},  # duplicate
        {"paragraphs": ["君不見黃河之水天上來，奔流到海不復回。"]},
    ]
    (pkg / "quantangshi" / "poet.tang.0.json").write_text(json.dumps(poems, ensure_ascii=False), encoding="utf-8")
    (pkg / "quantangshi" / "poet.song.0.json").write_text(json.dumps(poems[2:], ensure_ascii=False), encoding="utf-8")
    t300 = {"content": [{"type": "五言絕句", "content": [{"paragraphs": ["白日依山盡，黃河入海流。", "欲窮千里目，更上一層樓。"]}]}]}
    (pkg / "mengxue" / "tangshisanbaishou.json").write_text(json.dumps(t300, ensure_ascii=False), encoding="utf-8")
    out = build(tmp_path)
    assert out["tang.txt"] == ["床前明月光，疑是地上霜。举头望明月，低头思故乡。", "君不见黄河之水天上来，奔流到海不复回。"]
    assert out["tang-quatrains.txt"] == ["床前明月光，疑是地上霜。举头望明月，低头思故乡。"]
    assert out["tangshi300.txt"] == ["白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"]


def test_all_adds_song_and_tang_plus_song_without_repeats(tmp_path):
    pkg = tmp_path / "package" / "dist"
    (pkg / "quantangshi").mkdir(parents=True)
    (pkg / "mengxue").mkdir(parents=True)
    tang = [{"paragraphs": ["床前明月光，疑是地上霜。"]}, {"paragraphs": ["白日依山盡，黃河入海流。"]}]
    song = [{"paragraphs": ["白日依山盡，黃河入海流。"]},  # also a Tang poem: once in all.txt
            {"paragraphs": ["春風又綠江南岸，明月何時照我還。"]}, {"paragraphs": ["春風又綠江南岸，明月何時照我還。"]}]
    (pkg / "quantangshi" / "poet.tang.0.json").write_text(json.dumps(tang, ensure_ascii=False), encoding="utf-8")
    (pkg / "quantangshi" / "poet.song.0.json").write_text(json.dumps(song, ensure_ascii=False), encoding="utf-8")
    (pkg / "mengxue" / "tangshisanbaishou.json").write_text(json.dumps({"content": []}), encoding="utf-8")
    plain = build(tmp_path)
    assert set(plain) == {"tang.txt", "tang-quatrains.txt", "tangshi300.txt"}  # song only when asked
    out = build(tmp_path, song=True)
    assert {k: out[k] for k in plain} == plain  # the shipped corpora do not change
    assert out["song.txt"] == ["白日依山尽，黄河入海流。", "春风又绿江南岸，明月何时照我还。"]
    assert out["all.txt"] == ["床前明月光，疑是地上霜。", "白日依山尽，黄河入海流。", "春风又绿江南岸，明月何时照我还。"]


def test_ci_are_read_cleaned_simplified_and_kept_once_with_their_tune(tmp_path):
    pkg = tmp_path / "package" / "dist" / "songci"
    pkg.mkdir(parents=True)
    first = [{"rhythmic": "浣溪沙", "paragraphs": ["一曲新詞酒一杯。", "去年天氣舊亭臺。（一作「臺」）"]}]
    later = [{"rhythmic": "失調名", "paragraphs": ["一曲新词酒一杯。去年天气旧亭台。"]},  # a repeat
             {"rhythmic": "如夢令", "paragraphs": ["昨夜雨疏風驟。"]}]
    (pkg / "ci.song.1000.json").write_text(json.dumps(later, ensure_ascii=False), encoding="utf-8")
    (pkg / "ci.song.0.json").write_text(json.dumps(first, ensure_ascii=False), encoding="utf-8")
    (pkg / "宋词三百首.json").write_text(json.dumps(later, ensure_ascii=False), encoding="utf-8")  # a selection: not read
    assert build_ci(tmp_path) == [("浣溪沙", "一曲新词酒一杯。去年天气旧亭台。"), ("如梦令", "昨夜雨疏风骤。")]
