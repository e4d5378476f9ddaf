"""The web playground in a real browser: headless Chromium (Debian's package) driven by Playwright,
against a real server process that needs an API key. Screenshots of every tab are written to the
test's temporary directory for review."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

from paths import VOICE_PROMPTS_DIR

CHROMIUM = Path("/usr/bin/chromium")
API_KEY = "playground-test-key"
TABS = ("speak", "clone", "dialogue", "live", "voices")


def _browser_missing() -> str | None:
    if shutil.which("chromium") is None and not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM}: `make setup` as root installs Debian's chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: `make setup` installs it"
    return None


@pytest.fixture(scope="module")
def browser():
    missing = _browser_missing()
    if missing:
        # In CI a missing browser is a broken setup, not a reason to skip.
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(missing)
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def playground_url(start_server) -> str:
    server = start_server(extra_env={"HIGGS_API_KEYS": API_KEY})
    server.wait_until(("healthy",))
    return server.url


@pytest.fixture
def console_errors() -> list[str]:
    return []


@pytest.fixture
def page(browser, playground_url, console_errors):
    """A fresh page whose API key is already stored; after the test, no console errors (a test that
    expects some empties the list) and no request that left the server's origin."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.add_init_script(f"localStorage.setItem('higgs-playground-api-key', '{API_KEY}')")
    page = context.new_page()
    foreign: list[str] = []
    page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: console_errors.append(str(error)))
    origin = urlparse(playground_url).netloc
    page.on("request", lambda request: foreign.append(request.url)
            if urlparse(request.url).scheme not in ("blob", "data") and urlparse(request.url).netloc != origin else None)
    page.goto(playground_url + "/")
    page.wait_for_selector("#voice-rows tr[data-voice=belinda]", state="attached")
    yield page
    context.close()
    assert not console_errors, console_errors
    assert not foreign, foreign


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def settle(page, panel: str) -> dict:
    """Waits for the panel's current action to end; returns its result's data attributes."""
    result = page.locator(f"#{panel} .result")
    page.wait_for_function(f"document.querySelector('#{panel} .result').dataset.state !== 'busy'", timeout=120_000)
    return result.evaluate("node => ({...node.dataset, text: node.innerText})")


def set_max_length(page, tokens: int, seed: int | None = None) -> None:
    page.locator("#settings summary").click()
    page.get_by_label("Max length").fill(str(tokens))
    if seed is not None:
        page.get_by_label("Seed").fill(str(seed))


def test_the_page_is_ours_and_every_tab_renders(browser, playground_url, tmp_path):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    # No key yet: the page and its files load, the voices answer 401 and the page says so.
    response = page.goto(playground_url + "/playground")
    assert response.status == 200 and page.title() == "Higgs Audio playground"
    assert "swagger" not in page.content().lower()
    page.wait_for_function("document.getElementById('page-error').textContent.includes('missing API key')")
    assert "healthy" in page.locator("#status").inner_text()
    assert "noise, not speech" in page.locator("#status-note").inner_text()
    page.get_by_label("API key").fill(API_KEY)
    page.get_by_label("API key").blur()
    page.wait_for_selector("#voice-rows tr[data-voice=en_man]", state="attached")
    assert page.locator("#page-error").inner_text() == ""
    # The key was kept: a reload needs no typing.
    page.reload()
    page.wait_for_selector("#voice-rows tr[data-voice=en_man]", state="attached")
    unlabelled = page.evaluate("[...document.querySelectorAll('input, select, textarea')]"
                               ".filter(e => !e.labels.length && !e.getAttribute('aria-label')).map(e => e.name)")
    assert unlabelled == [], unlabelled
    # Keyboard: arrow keys move between tabs.
    page.get_by_role("tab", name="Speak").focus()
    page.keyboard.press("ArrowRight")
    assert page.get_by_role("tab", name="Clone").get_attribute("aria-selected") == "true"
    for tab in TABS:
        open_tab(page, tab.capitalize())
        page.screenshot(path=str(tmp_path / f"{tab}.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    for tab in ("speak", "live", "voices"):
        open_tab(page, tab.capitalize())
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "wider than a phone"
        page.screenshot(path=str(tmp_path / f"{tab}-phone.png"), full_page=True)
    print(f"screenshots in {tmp_path}")
    context.close()
    # The only console errors are the browser's own lines for the expected 401s.
    assert all("401" in error for error in errors), errors


def test_speak_plays_audio_while_it_is_streamed(page, tmp_path):
    page.locator("#speak-form select[name=voice]").select_option("belinda")
    # Six sentences are generated as several chunks: with this seed, about 13 s of audio over a few
    # seconds, so the first pieces play while later ones are still being generated.
    page.locator("#speak-form textarea[name=text]").fill(" ".join(["This playground streams audio while the model is still speaking."] * 6))
    set_max_length(page, 300, seed=3)
    page.get_by_role("button", name="Speak", exact=True).click()
    result = settle(page, "speak")
    assert result["state"] == "done", result
    assert float(result["playedBeforeEnd"]) > 0, result
    assert float(result["duration"]) > 0
    for fact in ("Time to first audio", "Realtime factor", "Finish reason"):
        assert fact in result["text"]
    assert page.locator("#speak .result audio").get_attribute("src").startswith("blob:")
    assert page.locator("#speak .result a[download]").get_attribute("download") == "speech.wav"
    page.screenshot(path=str(tmp_path / "speak-result.png"), full_page=True)


def test_an_uploaded_voice_is_offered_then_deleted(page):
    open_tab(page, "Clone")
    page.get_by_label("Reference audio (WAV, MP3 or FLAC)").set_input_files(str(VOICE_PROMPTS_DIR / "en_woman.wav"))
    page.get_by_label("Transcript of the reference").fill((VOICE_PROMPTS_DIR / "en_woman.txt").read_text())
    page.get_by_label("Name").fill("playground_voice")
    page.get_by_role("button", name="Save voice").click()
    assert "Saved the voice playground_voice" in settle(page, "clone")["text"]
    assert page.locator("#speak-form select[name=voice] option[value=playground_voice]").count() == 1
    # Used once, the same clip clones in a streamed generation.
    set_max_length(page, 40)
    page.get_by_role("button", name="Speak with this voice").click()
    assert settle(page, "clone")["state"] == "done"
    open_tab(page, "Voices")
    page.get_by_role("button", name="Delete the voice playground_voice").click()
    assert "Deleted the voice playground_voice" in settle(page, "voices")["text"]
    assert page.locator("#voice-rows tr[data-voice=playground_voice]").count() == 0
    assert page.locator("select option[value=playground_voice]").count() == 0
    # Presets have no delete button, and their reference audio plays.
    assert page.get_by_role("button", name="Delete the voice belinda").count() == 0
    page.get_by_role("button", name="Play the reference audio of belinda").click()
    assert settle(page, "voices")["state"] == "done"


def test_a_dialogue_with_two_voices_returns_audio(page):
    open_tab(page, "Dialogue")
    assert page.get_by_label("Speaker 0 voice").input_value() != page.get_by_label("Speaker 1 voice").input_value()
    set_max_length(page, 60)
    page.get_by_role("button", name="Generate the dialogue").click()
    result = settle(page, "dialogue")
    assert result["state"] == "done", result
    assert float(result["duration"]) > 0 and "Finish reason" in result["text"]


def test_an_api_error_is_shown_in_words(page, console_errors):
    page.locator("#speak-form select[name=voice]").evaluate("select => { select.add(new Option('nobody')); select.value = 'nobody'; }")
    page.get_by_role("button", name="Speak", exact=True).click()
    result = settle(page, "speak")
    assert result["state"] == "error"
    assert result["text"].startswith("400:") and "nobody" in result["text"], result
    assert page.get_by_role("alert").filter(has_text="nobody").is_visible()
    # The browser's own line for the failed request is the only console error.
    assert len(console_errors) == 1 and "400" in console_errors[0], console_errors
    console_errors.clear()


def test_live_speaks_text_sent_word_by_word_sentence_by_sentence(page, tmp_path):
    open_tab(page, "Live")
    page.locator("#live-form select[name=voice]").select_option("en_man")
    set_max_length(page, 60, seed=3)
    page.locator("#live-form textarea[name=text]").fill("First sentence here. Second sentence there. And a third one")
    page.locator("#live-form input[name=words_per_second]").fill("30")
    page.get_by_role("button", name="Start").click()
    result = settle(page, "live")
    assert result["state"] == "done", result
    assert float(result["duration"]) > 0 and "Time to first audio" in result["text"]
    rows = page.locator("#live-segments tr")
    assert rows.evaluate_all("rows => rows.map(r => r.cells[1].textContent)") == [
        "First sentence here.", "Second sentence there.", "And a third one."]
    for row in rows.evaluate_all("rows => rows.map(r => ({...r.dataset, computed: r.cells[4].textContent}))"):
        assert float(row["firstAudio"]) > 0 and row["finish"] in ("stop", "length", "guard"), row
    page.screenshot(path=str(tmp_path / "live-result.png"), full_page=True)


def test_live_stop_interrupts_the_segment_being_spoken(page):
    open_tab(page, "Live")
    set_max_length(page, 1500, seed=3)
    page.get_by_label("Temperature").fill("0")  # greedy: tiny-random goes on to the max length
    page.locator("#live-form textarea[name=text]").fill("This one sentence would go on for a minute. More after it.")
    page.get_by_role("button", name="Start").click()
    page.wait_for_selector("#live-segments tr[data-first-audio]", state="attached", timeout=60_000)
    page.get_by_role("button", name="Stop").click()
    result = settle(page, "live")
    assert result["state"] == "done" and result["cancelled"] == "true", result
    assert page.locator("#live-segments tr").evaluate_all("rows => rows.map(r => r.dataset.finish)") == ["cancelled"]


def test_the_api_reference_renders_offline(browser, playground_url, tmp_path):
    """/docs on a server with keys: Swagger UI from the server's own assets lists every route."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    origin, foreign, errors = urlparse(playground_url).netloc, [], []
    page.on("request", lambda request: foreign.append(request.url)
            if urlparse(request.url).scheme not in ("blob", "data") and urlparse(request.url).netloc != origin else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(playground_url + "/docs")
    page.wait_for_selector(".opblock-summary-path", state="attached", timeout=30_000)
    paths = set(page.locator(".opblock-summary-path").evaluate_all("nodes => nodes.map(n => n.dataset.path)"))
    page.screenshot(path=str(tmp_path / "docs.png"), full_page=False)
    context.close()
    assert {"/generate", "/generate/voice-clone", "/generate/multi-speaker", "/upload-voice", "/v1/audio/speech",
            "/v1/models", "/v1/audio/voices", "/voices/{name}/audio"} <= paths, paths
    assert not foreign, foreign
    assert not errors, errors
