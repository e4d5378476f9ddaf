"""Splitting long text into generation chunks at natural boundaries."""

from __future__ import annotations

import itertools
import random
import unicodedata

import pytest

from higgs_runtime.text_chunks import SPEAKER_TAG, split_dialogue, split_for_generation, split_text

CHINESE_CLAUSES = ["今天天气很好", "我们一起去公园散步", "孩子们在草地上玩耍", "老人坐在长椅上聊天", "远处传来悠扬的歌声",
                   "湖面上有几只小船", "风吹过树梢沙沙作响"]
KOREAN = ("안녕하세요. 오늘은 날씨가 정말 좋네요, 그래서 공원에 산책하러 가려고 합니다. 같이 가실래요? "
          "네, 좋아요! 점심을 먹고 두 시쯤에 출발합시다. 저는 커피를 한 잔 가져갈게요; 당신은 간식을 준비해 주세요.")
JAPANESE = ("「こんにちは。」と彼は言った。今日はとてもいい天気ですね、公園へ散歩に行きましょう。"
            "子供たちが芝生の上で遊んでいます！お年寄りはベンチに座って話しています。遠くから歌声が聞こえてきます？")
SENTENCE_POOL = [
    "Mr. Brown met Dr. Lee at 3.14 p.m. on Main St. yesterday.",
    "The results, e.g. the second table, were clear; i.e. the model works, etc. and more.",
    'He said "Hi." Then he left the room without another word!',
    "Was it worth it? Nobody knows…",
    "It costs $12.50 — roughly the price of lunch.",
    "Supercalifragilisticexpialidociousnessisaverylongwordwithoutanyspaces.",
    "今天天气很好，我们一起去公园散步。",
    "孩子们在草地上玩耍、老人坐在长椅上聊天！",
    "오늘은 날씨가 정말 좋네요, 그래서 공원에 갑니다.",
    "子供たちが芝生の上で遊んでいます。",
    "Short one.",
    "\n\n",
]


def compact(text: str) -> str:
    return "".join(text.split())


def assert_valid_chunks(text: str, chunks: list[str], max_chars: int) -> None:
    """Every chunk fits, is stripped and non-empty, and the chunks are the text's substrings in order."""
    assert compact("".join(chunks)) == compact(text)
    position = 0
    for chunk in chunks:
        assert chunk and chunk == chunk.strip()
        assert len(chunk) <= max_chars
        position = text.index(chunk, position) + len(chunk)


def chinese_text(length: int) -> str:
    clauses = itertools.cycle(CHINESE_CLAUSES)
    parts = []
    while sum(map(len, parts)) < length:
        parts.append(next(clauses) + ("。" if len(parts) % 3 == 2 else "，"))
    return "".join(parts)


def english_paragraph(seed: int, sentences: int) -> str:
    words = ["the", "quiet", "river", "carried", "small", "boats", "past", "old", "stone", "houses"]
    rng = random.Random(seed)
    return " ".join(" ".join(rng.choices(words, k=8)).capitalize() + "." for _ in range(sentences))


ROUND_TRIP_CASES = {
    "english_paragraphs": ("\n\n".join(english_paragraph(seed, 4) for seed in range(5)), 200),
    "sentences": (" ".join(["Short sentence number one."] * 30), 100),
    "abbreviations": (" ".join(SENTENCE_POOL[:5] * 4), 90),
    "no_punctuation": (" ".join(["word"] * 200), 50),
    "chinese": (chinese_text(2000), 100),
    "korean": (KOREAN, 40),
    "japanese": (JAPANESE, 30),
    "long_word": ("start " + "x" * 1000 + " end", 64),
    "mixed": (" ".join(SENTENCE_POOL), 25),
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP_CASES))
def test_chunks_fit_and_join_back_into_the_text(name):
    text, max_chars = ROUND_TRIP_CASES[name]
    assert_valid_chunks(text, split_text(text, max_chars), max_chars)


def test_text_that_fits_comes_back_as_one_stripped_chunk():
    text = "  One sentence. Another one!\n"
    assert split_text(text, 300) == ["One sentence. Another one!"]
    assert split_for_generation(text, 300) == ["One sentence. Another one!"]
    assert split_for_generation("\n[SPEAKER0] Hi. [SPEAKER1] Yo. ", 300) == ["[SPEAKER0] Hi. [SPEAKER1] Yo."]
    assert split_text("  \n ", 300) == []


def test_max_chars_must_be_positive():
    with pytest.raises(ValueError):
        split_text("text", 0)


def test_paragraphs_that_do_not_fit_together_become_their_own_chunks():
    paragraphs = [english_paragraph(seed, 3) for seed in range(4)]
    assert all(len(first) + len(second) > 150 for first, second in zip(paragraphs, paragraphs[1:]))
    assert split_text("\n\n".join(paragraphs), 150) == paragraphs


def test_small_paragraphs_are_packed_with_their_break_kept():
    text = "First.\n\nSecond.\n\nThird is a bit longer."
    assert split_text(text, 25) == ["First.\n\nSecond.", "Third is a bit longer."]


def test_short_sentences_are_packed_and_cut_at_sentence_ends():
    sentence = "Short sentence number one."
    chunks = split_text(" ".join([sentence] * 30), 100)
    assert chunks == [" ".join([sentence] * 3)] * 10


def test_a_paragraph_break_beats_a_sentence_end():
    assert split_text("One. Two.\n\nThree. Four.", 15) == ["One. Two.", "Three. Four."]


def test_abbreviations_and_decimals_do_not_end_sentences():
    sentences = ["Mr. Brown met Dr. Lee at noon.", "They measured 3.14 units, e.g. a lot.",
                 "Bring pens, paper, i.e. tools.", "Apples, pears, etc. are fruit.",
                 "It was 2.5 km away from the U.S. border.", "I spoke first, and then so did I.",
                 "John F. Kennedy spoke to the crowd at noon."]
    assert split_text(" ".join(sentences), 45) == sentences


def test_closing_quotes_and_brackets_stay_with_their_sentence():
    assert split_text('He said "Hi." Then he left.', 20) == ['He said "Hi."', "Then he left."]
    assert split_text("It ended (finally!) And then more came.", 25) == ["It ended (finally!)", "And then more came."]
    assert split_text("他说：“你好。”然后他走了。", 10) == ["他说：“你好。”", "然后他走了。"]


def test_a_long_sentence_is_cut_at_clauses_before_spaces():
    text = "When the rain stopped, everyone went outside; the children ran to the park and played until dark."
    assert split_text(text, 60) == ["When the rain stopped, everyone went outside;",
                                     "the children ran to the park and played until dark."]


def test_a_long_sentence_without_punctuation_is_cut_at_spaces():
    words = [f"word{index}" for index in range(100)]
    chunks = split_text(" ".join(words), 50)
    assert [word for chunk in chunks for word in chunk.split()] == words
    assert all(len(chunk) <= 50 for chunk in chunks)
    assert all(len(chunk) > 40 for chunk in chunks[:-1])


def test_long_chinese_text_is_cut_at_chinese_punctuation():
    text = chinese_text(2000)
    assert len(text) >= 2000
    chunks = split_text(text, 100)
    assert_valid_chunks(text, chunks, 100)
    assert all(chunk.endswith("。") for chunk in chunks[:-1])
    assert all(chunk.endswith(("。", "，")) for chunk in split_text(text, 15))


def test_chinese_without_punctuation_is_cut_between_characters_not_inside_latin_words():
    text = "中文" * 20 + "Transformer" + "中文" * 20
    chunks = split_text(text, 30)
    assert_valid_chunks(text, chunks, 30)
    assert any("Transformer" in chunk for chunk in chunks)


def test_korean_is_cut_at_sentences_then_clauses_then_spaces():
    assert split_text(KOREAN, 40) == ["안녕하세요.", "오늘은 날씨가 정말 좋네요, 그래서 공원에 산책하러 가려고 합니다.",
                                      "같이 가실래요? 네, 좋아요! 점심을 먹고 두 시쯤에 출발합시다.",
                                      "저는 커피를 한 잔 가져갈게요; 당신은 간식을 준비해 주세요."]
    chunks = split_text(KOREAN, 20)
    assert_valid_chunks(KOREAN, chunks, 20)
    assert chunks[:3] == ["안녕하세요.", "오늘은 날씨가 정말 좋네요,", "그래서 공원에 산책하러 가려고"]


def test_japanese_is_cut_at_japanese_punctuation():
    chunks = split_text(JAPANESE, 20)
    assert_valid_chunks(JAPANESE, chunks, 20)
    assert all(chunk.endswith(("。", "、", "！", "？")) for chunk in chunks)
    assert chunks[1:3] == ["今日はとてもいい天気ですね、", "公園へ散歩に行きましょう。"]


def test_a_word_longer_than_max_chars_is_hard_split():
    text = "before " + "x" * 25 + " after"
    assert split_text(text, 10) == ["before", "x" * 10, "x" * 10, "xxxxx", "after"]


def test_a_hard_split_keeps_combining_marks_with_their_letter():
    text = "e\u0301" * 20
    chunks = split_text(text, 7)
    assert_valid_chunks(text, chunks, 7)
    assert not any(unicodedata.combining(chunk[0]) for chunk in chunks)


@pytest.mark.parametrize("text", ["a" + "\u0301" * 5000, ("e" + "\u0301" * 400 + " ") * 12])
def test_runs_of_combining_marks_do_not_make_tiny_chunks(text):
    """Thousands of marks on one letter are cut inside the marks, so chunks stay full size."""
    chunks = split_text(text, 300)
    assert_valid_chunks(text, chunks, 300)
    assert len(chunks) <= 2 * len(text) // 300 + 1, len(chunks)


DIALOGUE = ("[SPEAKER0] Hi! How are you today?\n[SPEAKER1] I'm well, thanks for asking!\n"
            "[SPEAKER0] Great. Shall we go?\n[SPEAKER1] Sure.")


def turns(text: str) -> list[str]:
    starts = [match.start() for match in SPEAKER_TAG.finditer(text)]
    return [text[start:end].strip() for start, end in zip(starts, starts[1:] + [len(text)])]


def collapsed_tags(text: str) -> list[str]:
    return [tag for tag, _ in itertools.groupby(SPEAKER_TAG.findall(text))]


def assert_valid_dialogue(text: str, chunks: list[str], max_chars: int) -> None:
    """Chunks fit and start with a tag; without the tags a long turn repeats they join back into the text."""
    assert all(chunk and len(chunk) <= max_chars and SPEAKER_TAG.match(chunk) for chunk in chunks)
    joined = "".join(chunks)
    assert compact(SPEAKER_TAG.sub("", joined)) == compact(SPEAKER_TAG.sub("", text))
    assert collapsed_tags(joined) == collapsed_tags(text)


def test_dialogue_turns_that_fit_are_packed_whole():
    chunks = split_dialogue(DIALOGUE, 80)
    assert chunks == ["[SPEAKER0] Hi! How are you today?\n[SPEAKER1] I'm well, thanks for asking!",
                      "[SPEAKER0] Great. Shall we go?\n[SPEAKER1] Sure."]
    assert split_dialogue(DIALOGUE, 40) == turns(DIALOGUE)


def test_a_long_turn_is_split_and_every_piece_carries_its_tag():
    long_turn = "[SPEAKER1] " + " ".join(english_paragraph(seed, 2) for seed in range(4))
    text = f"[SPEAKER0] Tell me a story.\n{long_turn}\n[SPEAKER0] Thanks!"
    chunks = split_dialogue(text, 120)
    assert_valid_dialogue(text, chunks, 120)
    assert chunks[0] == "[SPEAKER0] Tell me a story."
    story = [chunk for chunk in chunks if chunk.startswith("[SPEAKER1]")]
    assert len(story) > 2
    assert all(chunk.count("[SPEAKER1]") == 1 for chunk in story)


def test_text_before_the_first_tag_is_its_own_chunk():
    text = "A cafe scene. " + DIALOGUE
    assert split_dialogue(text, 80) == ["A cafe scene."] + split_dialogue(DIALOGUE, 80)


def test_dialogue_rejects_max_chars_too_small_for_a_tag():
    with pytest.raises(ValueError):
        split_dialogue("[SPEAKER0] Hello there, friend.", 11)


def test_split_for_generation_picks_the_splitter_by_speaker_tags():
    assert split_for_generation(DIALOGUE, 40) == split_dialogue(DIALOGUE, 40)
    assert split_for_generation(KOREAN, 40) == split_text(KOREAN, 40)


def random_text(rng: random.Random) -> str:
    return " ".join(rng.choices(SENTENCE_POOL, k=rng.randint(1, 40)))


def test_random_mixes_keep_every_invariant():
    rng = random.Random(1234)
    for _ in range(300):
        text, max_chars = random_text(rng), rng.randint(8, 300)
        chunks = split_text(text, max_chars)
        assert_valid_chunks(text, chunks, max_chars)
        if text.strip() and len(text.strip()) <= max_chars:
            assert chunks == [text.strip()]


def test_random_dialogues_keep_every_invariant():
    rng = random.Random(5678)
    for _ in range(200):
        text = "\n".join(f"[SPEAKER{rng.randint(0, 3)}] {random_text(rng)}" for _ in range(rng.randint(1, 8)))
        max_chars = rng.randint(20, 300)
        chunks = split_dialogue(text, max_chars)
        assert_valid_dialogue(text, chunks, max_chars)
        whole_turns = [turn for turn in turns(text) if len(turn) <= max_chars]
        assert all(any(turn in chunk for chunk in chunks) for turn in whole_turns)
