"""The try-it page end to end in headless Chromium (Debian's binary, driven by Playwright): upload an
image, type a question, move the budget slider, see the answer and the plan; then compare two budgets.

Skipped only when Chromium is missing outside CI; under CI (`CI` set) it must run."""

import os
import shutil

import pytest

from tests.serving import SCENE, live_server

IN_CI = bool(os.environ.get("CI"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
if not IN_CI:
    if not os.path.exists(CHROMIUM):
        pytest.skip(
            "no chromium binary (apt-get install chromium; .ci/run installs it)", allow_module_level=True
        )
    pytest.importorskip(
        "playwright.sync_api", reason="playwright is a dev dependency: pip install -e '.[dev]'"
    )

from playwright.sync_api import sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser):
    with live_server("tiny-adallava-l") as server:
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.url + "/")
        yield page
        page.close()
        assert errors == [], errors


def set_slider(page, selector: str, value: float) -> None:
    """Move a range input as a user would: its value changes and it fires `input`."""
    page.locator(selector).fill(str(value))


def test_ask_with_a_budget_shows_the_answer_and_the_plan(page):
    page.wait_for_function("document.getElementById('budget-a').min === '0.5'")  # b_min from /v1/models
    assert page.locator("#ask").is_disabled()
    page.set_input_files("#image", str(SCENE))
    page.fill("#question", "what color is the circle ?")
    set_slider(page, "#budget-a", 0.75)
    assert page.locator("#budget-a-value").text_content() == "0.75"
    page.click("#ask")
    card = page.locator(".result").first
    card.locator(".answer").wait_for()
    assert card.locator(".answer").text_content().strip() != ""
    assert card.locator(".budget-value").text_content() == "0.75"
    assert card.locator(".strip .layer").count() == 16
    assert card.locator(".strip .layer.on").count() == 12  # 0.75 of 16 layers
    assert "75%" in card.locator(".flops-llm").text_content()
    assert "ms" in card.locator(".time").text_content()
    assert page.locator("#error").is_hidden()


def test_compare_two_budgets_side_by_side(page):
    page.set_input_files("#image", str(SCENE))
    page.fill("#question", "how many shapes are there ?")
    page.check("#compare")
    set_slider(page, "#budget-a", 1.0)
    set_slider(page, "#budget-b", 0.5)
    page.click("#ask")
    page.wait_for_function("document.querySelectorAll('.result').length === 2")
    cards = page.locator(".result")
    assert cards.nth(0).locator(".strip .layer.on").count() == 16
    assert cards.nth(1).locator(".strip .layer.on").count() == 8
    assert cards.nth(1).locator(".budget-value").text_content() == "0.50"
    for i in range(2):
        assert cards.nth(i).locator(".answer").text_content().strip() != ""


def test_the_page_asks_once_for_the_api_key_of_a_server_that_has_one(browser):
    # Bug caught: with --api-key the page could not even load the model's description (401).
    with live_server("tiny-adallava-l", api_key="s3cret") as server:
        page = browser.new_page()
        prompts: list[str] = []
        page.on("dialog", lambda dialog: (prompts.append(dialog.message), dialog.accept("s3cret")))
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('budget-a').min === '0.5'")
        page.set_input_files("#image", str(SCENE))
        page.fill("#question", "what color is the circle ?")
        page.click("#ask")
        page.locator(".result .answer").first.wait_for()
        assert len(prompts) == 1 and "API key" in prompts[0]  # asked once, then kept for the tab
        page.close()


def test_deadline_mode_shows_whether_the_deadline_was_met(page):
    """Catches: the page sending the deadline as a fraction, or not showing its outcome."""
    page.set_input_files("#image", str(SCENE))
    page.fill("#question", "what color is the circle ?")
    if page.locator("#compare").is_checked():
        page.click("#compare")
    page.click("#deadline-mode")
    assert page.locator("#budget-a").is_disabled()
    page.fill("#deadline-ms", "10000")
    page.click("#ask")
    card = page.locator(".result").first
    card.locator(".deadline").wait_for()
    text = card.locator(".deadline").text_content()
    assert text.startswith("met:") and "of 10000 ms" in text and "predicted" in text
    assert "deadline 10000 ms" in card.locator(".budget-value").text_content()
    page.click("#deadline-mode")  # back to budgets
    assert not page.locator("#budget-a").is_disabled()
