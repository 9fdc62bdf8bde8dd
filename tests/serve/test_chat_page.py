"""The chat page in a real headless Chromium (driven by Playwright) against the live server: it asks for the
API key, streams answers, keeps the conversation, shows errors, and loads nothing from elsewhere.

Needs ``pip install playwright`` and a system Chromium (``apt-get install -y chromium``); Playwright's own
browser download is not used.
"""

from __future__ import annotations

import httpx
import pytest
from serving import KEY
from support import chromium_path

pytestmark = [
    pytest.mark.skipif(chromium_path() is None, reason="needs a Chromium binary: apt-get install -y chromium"),
]

TURN_DONE = ("n => document.querySelectorAll('.msg.assistant').length === n"
             " && document.getElementById('send').disabled === false")


def expected_reply(client: httpx.Client, messages: list[dict[str, str]]) -> str:
    r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 6, "temperature": 0})
    return r.json()["choices"][0]["message"]["content"]


def test_chat_page_asks_for_the_key_streams_answers_and_keeps_the_conversation(base: str, client: httpx.Client):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright: pip install playwright")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            elsewhere: list[str] = []
            page.on("request", lambda r: None if r.url.startswith(base) else elsewhere.append(r.url))
            page.goto(f"{base}/")
            # without the key the page loads but cannot list the model: it says so and opens Settings
            sync_api.expect(page.locator("#status")).to_contain_text("API key")
            page.fill("#api-key", KEY)
            page.dispatch_event("#api-key", "change")
            sync_api.expect(page.locator("#model-name")).to_contain_text("tiny")
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "6")

            page.fill("#input", "Who is Hamlet?")
            page.click("#send")
            page.wait_for_function(TURN_DONE, arg=1, timeout=30_000)
            first = page.locator(".msg.assistant .content").nth(0).text_content()
            history = [{"role": "user", "content": "Who is Hamlet?"}]
            assert first == expected_reply(client, history) and first

            # the second turn is sent with the first one (Enter sends)
            page.fill("#input", "And Ophelia?")
            page.press("#input", "Enter")
            page.wait_for_function(TURN_DONE, arg=2, timeout=30_000)
            second = page.locator(".msg.assistant .content").nth(1).text_content()
            history += [{"role": "assistant", "content": first}, {"role": "user", "content": "And Ophelia?"}]
            assert second == expected_reply(client, history)

            # an error from the server shows in the conversation, and the page stays usable
            page.fill("#max-tokens", "5000")
            page.fill("#input", "Tell me more.")
            page.click("#send")
            page.wait_for_function(TURN_DONE, arg=3, timeout=30_000)
            error = page.locator(".msg.assistant").nth(2)
            assert "error" in error.get_attribute("class") and "context window" in error.text_content()
            assert [m.text_content() for m in page.locator(".msg.user .content").all()] == [
                "Who is Hamlet?", "And Ophelia?", "Tell me more."]
            assert elsewhere == []
        finally:
            browser.close()
