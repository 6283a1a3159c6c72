"""The page end to end in headless Chromium (Debian's chromium, driven by Playwright).

Uses the real default model (EfficientNet-Lite0). Needs ``pip install -e
".[serve,serve-test]"`` and ``apt-get install chromium``; ``.ci/run`` installs both, and
the test fails (it is never skipped) when Playwright or the browser is missing while
the web app itself is installed.

Screenshots go to ``$SACAM_SCREENSHOTS`` when set (``SACAM_SCREENSHOTS=docs/images``
refreshes the ones in the docs), else to a temporary folder.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from tests.support.serve import live_server, require

require("fastapi")
from sacam import list_methods  # noqa: E402
from sacam.models import sample_image  # noqa: E402
from sacam.serve import create_app  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


def _playwright():  # noqa: ANN202
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "Playwright is not installed: pip install -e '.[serve-test]' (the browser test "
            "is part of the suite)",
            pytrace=False,
        )
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: apt-get install chromium (Debian's package; the browser "
            "test is part of the suite)",
            pytrace=False,
        )
    return sync_playwright


def shoot(page, path: Path) -> None:  # noqa: ANN001
    page.screenshot(path=str(path), full_page=True, type="jpeg", quality=85)
    assert path.stat().st_size > 10_000


def test_page_end_to_end(default_model, tmp_path) -> None:  # noqa: ANN001
    sync_playwright = _playwright()
    shots = Path(os.environ.get("SACAM_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    photo = tmp_path / "chelsea.jpg"
    sample_image("chelsea").save(photo, quality=95)
    requested: list[str] = []
    problems: list[str] = []

    with live_server(create_app(default_model)) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = browser.new_context(
            accept_downloads=True, viewport={"width": 1360, "height": 1000}
        )

        def route(r) -> None:  # noqa: ANN001
            requested.append(r.request.url)
            if r.request.url.startswith(base + "/"):
                r.continue_()
            else:
                r.abort()

        context.route("**/*", route)
        page = context.new_page()
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on(
            "console",
            lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None,
        )
        page.goto(base + "/")
        page.wait_for_function(
            f"() => document.querySelectorAll('#methods input').length === {len(list_methods())}"
        )
        assert page.is_checked("#methods input[value='sa-cam']")  # preselected
        assert page.locator("#layer option").count() > 10  # automatic + the model's layers

        # upload a photo and pick a second method
        page.set_input_files("#file-input", str(photo))
        page.check("#methods input[value='grad-cam']")
        page.click("#explain")
        page.wait_for_selector(".card[data-method='grad-cam']", timeout=120_000)
        cards = page.locator(".card")
        assert cards.count() == 2
        assert [cards.nth(i).get_attribute("data-method") for i in range(2)] == [
            "grad-cam",
            "sa-cam",
        ]
        for i in range(2):
            overlay = cards.nth(i).locator("img.overlay")
            overlay.wait_for()
            page.wait_for_function(
                "img => img.complete && img.naturalWidth === 224", arg=overlay.element_handle()
            )
        assert page.locator("#predictions li").count() == 5
        assert "Egyptian cat" in page.inner_text("#explained")  # chelsea's top-1, class 285
        shoot(page, shots / "serve-maps.jpg")

        # click another class: the maps now explain it
        second = page.locator("#predictions button").nth(1)
        index = second.get_attribute("data-class")
        second.click()
        page.wait_for_function(
            f"() => document.querySelector('#explained').textContent.includes('({index},')",
            timeout=120_000,
        )
        assert page.get_attribute("#predictions button.active", "data-class") == index

        # click a position on SA-CAM's map: its attention row over the 7x7 grid
        sa = page.locator(".card[data-method='sa-cam']")
        sa.locator(".stack").first.click(position={"x": 150, "y": 100})  # of 280 x 280
        sa.locator(".attention-panel").wait_for(state="visible")
        info = sa.locator(".attention-info").inner_text()
        assert info.startswith("attention of position (2, 3)")  # floor(100/40), floor(150/40)
        assert sa.locator("img.attention").get_attribute("src").startswith("data:image/png")
        page.mouse.move(5, 5)  # off the maps: overlays, not the raw map shown on hover
        shoot(page, shots / "serve-attention.jpg")

        # deletion and insertion curves of both maps
        page.fill("#steps", "16")
        page.click("#curves")
        page.locator("#auc-table").wait_for(state="visible", timeout=120_000)
        assert page.locator("#auc-table tbody tr").count() == 2

        # download an overlay as PNG and the numbers as JSON
        with page.expect_download() as download:
            page.click(".card[data-method='grad-cam'] button.png")
        assert download.value.suggested_filename == "chelsea_grad-cam.png"
        png = tmp_path / "overlay.png"
        download.value.save_as(png)
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size == (224, 224)
        with page.expect_download() as download:
            page.click("#download-json")
        numbers = json.loads(Path(download.value.path()).read_text())
        assert [m["method"] for m in numbers["maps"]] == ["grad-cam", "sa-cam"]
        assert numbers["explained_class"]["class_index"] == int(index)
        assert [m["method"] for m in numbers["curves"]["methods"]] == ["grad-cam", "sa-cam"]
        assert numbers["attention"][0]["position"] == [2, 3]
        shoot(page, shots / "serve-curves.jpg")

        # a long method shows progress and can be cancelled; the page stays usable
        page.uncheck("#methods input[value='sa-cam']")
        page.uncheck("#methods input[value='grad-cam']")
        page.check("#methods input[value='score-cam']")
        page.click("#explain")
        page.wait_for_function(
            "() => document.querySelector('#stage').textContent.startsWith('score-cam')",
            timeout=120_000,
        )
        assert float(page.get_attribute("#progress", "value") or 0) > 0
        page.click("#cancel")
        page.wait_for_function(
            "() => document.querySelector('#message').textContent === 'cancelled'", timeout=120_000
        )
        assert page.locator(".card").count() == 2  # the last result is still shown

        # drag and drop another picture onto the drop zone
        page.evaluate(
            """async () => {
                const blob = await (await fetch('/api/samples/coffee')).blob();
                const dt = new DataTransfer();
                dt.items.add(new File([blob], 'coffee.png', {type: 'image/png'}));
                document.querySelector('#dropzone').dispatchEvent(
                    new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
            }"""
        )
        page.wait_for_function(
            "() => document.querySelector('#message').textContent.startsWith('coffee.png')"
        )
        assert not page.is_hidden("#chosen")
        browser.close()

    assert requested, "the route handler saw no requests"
    outside = [u for u in requested if not re.match(r"^http://127\.0\.0\.1:\d+/", u)]
    assert outside == [], f"the page asked for {outside}"
    assert problems == []
