"""Golden tests of the text normaliser: every mapping of issue 11, CJK and mixed text, tags in dialogue
turns, idempotence; and the normalised text through long-form splitting and the runaway guard."""

from __future__ import annotations

import pytest

from higgs_runtime.speech import runaway_guard_frames
from higgs_runtime.text_chunks import split_for_generation, split_text
from higgs_runtime.text_normalize import SOUND_EVENT_TOKENS, normalize, without_sound_events

TAG_CHARACTERS = {tag: mark for mark, tag in SOUND_EVENT_TOKENS.items()}


def marked(readable: str) -> str:
    """A golden output written with the tags' own spelling, as the normaliser holds them (one mark each)."""
    for tag in sorted(TAG_CHARACTERS, key=len, reverse=True):
        readable = readable.replace(tag, TAG_CHARACTERS[tag])
    return readable


GOLDEN = [
    # sound events
    ("He said [laugh]", "He said <SE>[Laughter]</SE>"),
    ("[applause]", "<SE>[Applause]</SE>"),
    ("[cheering]", "<SE>[Cheering]</SE>"),
    ("[cough] Sorry.", "<SE>[Cough]</SE> Sorry."),
    ("[music]", "<SE>[Music]</SE>"),
    ("[music start] la la [music end]", "<SE_s>[Music]</SE_s> la la <SE_e>[Music]</SE_e>"),
    ("[humming start] hm [humming end]", "<SE_s>[Humming]</SE_s> hm <SE_e>[Humming]</SE_e>"),
    ("[sing start] oh [sing end]", "<SE_s>[Singing]</SE_s> oh <SE_e>[Singing]</SE_e>"),
    ("[Laugh] and [MUSIC  Start]", "<SE>[Laughter]</SE> and <SE_s>[Music]</SE_s>."),
    # unknown bracketed words pass through
    ("A [sigh] and [laughing] here.", "A [sigh] and [laughing] here."),
    # full-width punctuation
    ("你好，世界。", "你好, 世界."),
    ("注意：小心；真的？好！", "注意:小心;真的?好!"),
    ("【提示】《书名》", "[提示]<书名>."),
    ("“Hi,” she said, ‘ok’", "\"Hi,\" she said, 'ok'"),
    ("「你好」『再见』", "\"你好\"\"再见\""),
    ("一、二", "一,二."),
    ("wait—what…", "wait-what..."),
    ("A·B", "A.B."),
    # parentheses become spaces, full-width ones too
    ("Tea (green) please.", "Tea green please."),
    ("茶（绿茶）好", "茶 绿茶 好."),
    # degrees
    ("It is 72°F today.", "It is 72 degrees Fahrenheit today."),
    ("水温30°C", "水温30 degrees Celsius."),
    # whitespace within lines collapsed, blank lines dropped, the text stripped
    ("  Many   spaces\there.  \n\n\n  Next\u3000line.  ", "Many spaces here.\nNext line."),
    ("10\u00a0km away.", "10\u00a0km away."),
    # the final full stop
    ("No ending", "No ending."),
    *[(f"Ends with {ending}", f"Ends with {ending}") for ending in ".!?,;\"'"],
    ("Ends with a tag [cough]", "Ends with a tag <SE>[Cough]</SE>"),
    ("Ends with a span's end [music end]", "Ends with a span's end <SE_e>[Music]</SE_e>"),
    ("Ends with a span's start [music start]", "Ends with a span's start <SE_s>[Music]</SE_s>."),
    # CJK and mixed text
    ("我们今天（周一）去公园，好吗？[laugh]", "我们今天 周一 去公园, 好吗?<SE>[Laughter]</SE>"),
    ("Hello，世界！It's 20°C [applause]", "Hello, 世界!It's 20 degrees Celsius <SE>[Applause]</SE>"),
    # dialogue: every turn on its own line and cleaned on its own; the speaker tags untouched
    ("[SPEAKER0] Hi there [laugh]\n\n[SPEAKER1]   How are   you", "[SPEAKER0] Hi there <SE>[Laughter]</SE>\n[SPEAKER1] How are you."),
    ("[SPEAKER0] One [SPEAKER1] Two（笑）", "[SPEAKER0] One.\n[SPEAKER1] Two 笑."),
    ("Intro line\n[SPEAKER0] [music start] sing along [music end]\n[SPEAKER1] 好的，[cough]",
     "Intro line.\n[SPEAKER0] <SE_s>[Music]</SE_s> sing along <SE_e>[Music]</SE_e>\n[SPEAKER1] 好的, <SE>[Cough]</SE>"),
    ("【SPEAKER0】你好\n【SPEAKER1】再见", "[SPEAKER0] 你好.\n[SPEAKER1] 再见."),
    # nothing left to say
    ("( )", ""),
]


@pytest.mark.parametrize("text,expected", GOLDEN, ids=[text for text, _ in GOLDEN])
def test_golden(text, expected):
    assert normalize(text) == marked(expected)


@pytest.mark.parametrize("text", [text for text, _ in GOLDEN])
def test_normalising_twice_changes_nothing(text):
    once = normalize(text)
    assert normalize(once) == once


def test_a_tag_is_one_mark_per_tag_token():
    assert normalize("[laugh]") == TAG_CHARACTERS["<SE>"] + "[Laughter]" + TAG_CHARACTERS["</SE>"]
    assert "<SE>" not in normalize("[laugh]")


def test_tags_typed_as_text_are_not_tags():
    """Only the bracket forms make tags: the literal strings stay characters (tokenized as plain text)."""
    assert normalize("<SE>[Laughter]</SE> 《SE》") == "<SE>[Laughter]</SE> <SE>."
    assert not set(normalize("<SE>[Laughter]</SE> 《SE》")) & set(SOUND_EVENT_TOKENS)


# --- normalised text through splitting and the runaway guard ----------------------------------------

LONG_TAGGED = " ".join(f"Part {i} [laugh] goes on [music start] for a while [music end]" for i in range(20))


@pytest.mark.parametrize("max_chars", [12, 13, 17, 25, 40, 80, 300])
def test_long_form_chunks_keep_every_tag_whole(max_chars):
    text = normalize(LONG_TAGGED)
    chunks = split_for_generation(text, max_chars)
    assert len(chunks) > 1
    for chunk in chunks:
        assert without_sound_events(chunk).count("[") == 0, chunk  # every label sits inside its whole tag
        assert not set(without_sound_events(chunk)) & set(SOUND_EVENT_TOKENS), chunk
    assert "".join(chunks).replace(" ", "") == text.replace(" ", "")


def test_a_run_without_boundaries_is_never_cut_inside_a_tag():
    text = normalize("x" * 20 + "[applause]" + "y" * 20 + "[cough]")
    for max_chars in range(12, 40):
        chunks = split_text(text, max_chars)
        assert "".join(chunks) == text
        assert all(not set(without_sound_events(chunk)) & set(SOUND_EVENT_TOKENS) for chunk in chunks), max_chars


def test_dialogue_chunks_keep_tags_whole_and_start_with_their_speaker():
    text = normalize("\n".join(f"[SPEAKER{i % 2}] Line {i} [laugh] with [cough] events" for i in range(12)))
    chunks = split_for_generation(text, 60)
    assert len(chunks) > 2 and all(chunk.startswith(("[SPEAKER0]", "[SPEAKER1]")) for chunk in chunks)
    assert all(without_sound_events(chunk).count("[") == 1 for chunk in chunks)


def test_the_runaway_guard_ignores_tag_markup():
    tagged = normalize("Hello [laugh] [applause] [music start] [music end] there")
    assert runaway_guard_frames(tagged, 3.0) == runaway_guard_frames(without_sound_events(tagged), 3.0)
    assert runaway_guard_frames(tagged, 3.0) < runaway_guard_frames("x" * len(tagged), 3.0)
