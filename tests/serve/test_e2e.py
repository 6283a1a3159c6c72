"""The page end to end in headless Chromium (Debian's chromium, driven by Playwright).

Uses the real default model (EfficientNet-Lite0). Needs ``pip install -e
".[serve,serve-test]"`` and ``apt-get install chromium``; ``.ci/run`` installs both, and
the test fails (it is never skipped) when Playwright or the browser is missing while
the web app itself is installed.

Screenshots (1440, 1024 and 390 px wide) go to ``$SACAM_SCREENSHOTS`` when set
(``SACAM_SCREENSHOTS=docs/images`` refreshes the ones in the docs), else to a temporary
folder. axe-core checks the page with results for serious accessibility problems.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.serve import (
    CHROMIUM,
    live_server,
    require,
    serious_accessibility_problems,
    sync_playwright,
)

require("fastapi")
from sacam import list_methods  # noqa: E402
from sacam.images import sample_image  # noqa: E402
from sacam.registry import method_info  # noqa: E402
from sacam.serve import create_app  # noqa: E402


def shoot(page, path: Path) -> None:  # noqa: ANN001
    page.screenshot(path=str(path), full_page=True, type="jpeg", quality=85, scale="css")
    assert path.stat().st_size > 10_000


def fits(page, width: int) -> bool:  # noqa: ANN001
    """No horizontal scrolling at this width."""
    return page.evaluate("() => document.documentElement.scrollWidth") <= width


def test_page_end_to_end(default_model, tmp_path) -> None:  # noqa: ANN001
    start = sync_playwright()
    shots = Path(os.environ.get("SACAM_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    photo = tmp_path / "chelsea.jpg"
    sample_image("chelsea").save(photo, quality=95)
    requested: list[str] = []
    problems: list[str] = []

    with live_server(create_app(default_model)) as base, start() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        context = browser.new_context(  # CSP bypassed for axe-core only (test_api checks it)
            accept_downloads=True,
            viewport={"width": 1440, "height": 900},
            device_scale_factor=2,
            bypass_csp=True,
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
        # LeGrad needs attention blocks, which EfficientNet has not: not offered, and said so
        offered = [m for m in list_methods() if m != "legrad"]
        page.wait_for_function(
            f"() => document.querySelectorAll('#methods input').length === {len(offered)}"
        )
        assert "legrad is hidden" in page.inner_text("#methods-note")
        assert page.is_checked("#methods input[value='sa-cam']")  # preselected
        assert page.get_attribute("#methods fieldset", "data-family") == "attention"  # first
        page.fill("#method-filter", "decomposition")  # by name, family or paper
        infos = [method_info(m) for m in offered]
        found = [i for i in infos if "decomposition" in f"{i.name} {i.family} {i.paper}".lower()]
        assert page.locator("#methods label:visible").count() == len(found) > 3
        page.fill("#method-filter", "")
        assert page.locator("#layer option").count() == 1 + 8  # automatic + the last 8
        page.check("#all-layers")
        assert page.locator("#layer option").count() > 10  # automatic + the model's layers
        page.uncheck("#all-layers")
        box = page.locator("#explain").bounding_box()
        assert box is not None and box["y"] + box["height"] <= 900  # on the first screen

        # upload a photo and pick a second method: SA-CAM's map first, then Grad-CAM's
        page.set_input_files("#file-input", str(photo))
        page.check("#methods input[value='grad-cam']")
        page.click("#explain")
        page.wait_for_selector(".card[data-method='grad-cam']", timeout=120_000)
        page.wait_for_function("() => !document.querySelector('.card.pending')", timeout=120_000)
        cards = page.locator(".card[data-method]")
        assert cards.count() == 2
        assert [cards.nth(i).get_attribute("data-method") for i in range(2)] == [
            "sa-cam",
            "grad-cam",
        ]
        assert page.locator(".card[data-role='original'] img").count() == 1
        for i in range(2):
            overlay = cards.nth(i).locator("img.overlay")
            overlay.wait_for()
            page.wait_for_function(
                "img => img.complete && img.naturalWidth === 224", arg=overlay.element_handle()
            )
        assert page.locator("#predictions li").count() == 5
        assert "Egyptian cat" in page.inner_text("#explained")  # chelsea's top-1, class 285
        shoot(page, shots / "serve-maps.jpg")
        for width in (390, 1024):
            page.set_viewport_size({"width": width, "height": 900})
            assert fits(page, width), f"the page scrolls sideways at {width} px"
            shoot(page, shots / f"serve-{width}.jpg")
        page.set_viewport_size({"width": 1440, "height": 900})

        # another colour map: the overlays and the colour bar follow
        jet = cards.nth(1).locator("img.overlay").get_attribute("src")
        bar_start = (  # the colour bar's colour of 0
            "() => Array.from(document.querySelector('#colorbar').getContext('2d')"
            ".getImageData(0, 0, 1, 1).data.slice(0, 3))"
        )
        assert page.evaluate(bar_start) == [0, 0, 128]  # jet's dark blue
        page.select_option("#cmap", "viridis")
        page.wait_for_function(
            "src => document.querySelectorAll('.card img.overlay')[1].src !== src", arg=jet
        )
        # matplotlib's viridis(0) is (68, 1, 84); the page draws a polynomial fit of it
        assert np.abs(np.array(page.evaluate(bar_start)) - [68, 1, 84]).max() <= 4
        page.select_option("#cmap", "jet")

        # click another class: the maps now explain it, without sending the image again
        uploads = sum(u.endswith("/api/jobs/explain") for u in requested)
        second = page.locator("#predictions button").nth(1)
        index = second.get_attribute("data-class")
        second.click()
        page.wait_for_function(
            f"() => document.querySelector('#explained').textContent.includes('({index},')",
            timeout=120_000,
        )
        assert page.get_attribute("#predictions button.active", "data-class") == index
        page.locator("#job").wait_for(state="hidden", timeout=120_000)  # both maps done
        assert sum(u.endswith("/api/jobs/explain") for u in requested) == uploads

        # click a position on SA-CAM's map: its attention row over the 7x7 grid
        sa = page.locator(".card[data-method='sa-cam']")
        stack = sa.locator(".stack").first
        size = stack.bounding_box()
        assert size is not None
        at = {"x": size["width"] * 150 / 280, "y": size["height"] * 100 / 280}
        stack.click(position=at)  # at (150, 100) of 280 x 280
        sa.locator(".attention-panel").wait_for(state="visible")
        info = sa.locator(".attention-info").inner_text()
        assert info.startswith("attention of position (2, 3)")  # floor(100/40), floor(150/40)
        assert sa.locator("img.attention").get_attribute("src").startswith("data:image/png")
        page.mouse.move(5, 5)  # off the maps
        shoot(page, shots / "serve-attention.jpg")

        # deletion and insertion curves of both maps, drawn at the screen's pixel density
        page.fill("#steps", "16")
        page.click("#curves")
        page.locator("#auc-table").wait_for(state="visible", timeout=120_000)
        assert page.locator("#auc-table tbody tr").count() == 2
        assert page.locator("#legend li").count() == 2  # the legend is beside, not on, them
        ratio = page.evaluate(
            "() => { const c = document.querySelector('#deletion-canvas');"
            " return c.width / c.getBoundingClientRect().width; }"
        )
        assert ratio == pytest.approx(2, abs=0.02)

        # download an overlay as PNG, a map as .npy and the numbers as JSON
        with page.expect_download() as download:
            page.click(".card[data-method='grad-cam'] button.png")
        assert download.value.suggested_filename == "chelsea_grad-cam.png"
        png = tmp_path / "overlay.png"
        download.value.save_as(png)
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size == (224, 224)
        with page.expect_download() as download:
            page.click(".card[data-method='grad-cam'] button.npy")
        cam = np.load(download.value.path())
        assert cam.shape == (224, 224) and cam.dtype == np.float32
        assert 0 <= cam.min() and cam.max() == 1
        with page.expect_download() as download:
            page.click("#download-json")
        numbers = json.loads(Path(download.value.path()).read_text())
        assert [m["method"] for m in numbers["maps"]] == ["sa-cam", "grad-cam"]
        assert numbers["explained_class"]["class_index"] == int(index)
        assert [m["method"] for m in numbers["curves"]["methods"]] == ["sa-cam", "grad-cam"]
        assert numbers["attention"][0]["position"] == [2, 3]
        shoot(page, shots / "serve-curves.jpg")

        # the keyboard: arrows and Enter on SA-CAM's map move the attention position
        stack.focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            "() => document.querySelector('.attention-info').textContent"
            ".startsWith('attention of position (2, 4)')"
        )

        # any class by name; the curves say they belong to the class before
        page.fill("#class-input", "tabby")
        page.press("#class-input", "Enter")
        page.wait_for_function(
            "() => document.querySelector('#explained').textContent.includes('tabby')",
            timeout=120_000,
        )
        # the note is written when the job's last step ends, after the class text
        page.wait_for_function(
            "() => document.querySelector('#curves-note').textContent.toLowerCase()"
            ".includes('compute')",
            timeout=120_000,
        )
        assert serious_accessibility_problems(page) == []

        # a long method shows honest progress and can be cancelled; the page stays usable
        page.uncheck("#methods input[value='sa-cam']")
        page.uncheck("#methods input[value='grad-cam']")
        page.check("#methods input[value='score-cam']")
        page.click("#explain")
        page.wait_for_function(  # score-cam's stage, once its first passes are counted
            "() => /^score-cam · [1-9]/.test(document.querySelector('#stage').textContent)",
            timeout=120_000,
        )
        assert float(page.get_attribute("#progress", "value") or 0) > 0
        # "score-cam · 12 of 1,283 passes · 3.1 s elapsed · about 40 s left"
        stage = page.inner_text("#stage")
        counts = re.match(r"score-cam · ([\d,]+) of ([\d,]+) passes · [\d.]+ s elapsed", stage)
        assert counts is not None, stage
        done, planned = (int(n.replace(",", "")) for n in counts.groups())
        assert 1 <= done < planned and planned > 1000, stage  # a pass per masked channel
        page.click("#cancel")
        page.wait_for_function(
            "() => document.querySelector('#message').textContent === 'cancelled'", timeout=120_000
        )
        assert page.locator(".card[data-method]").count() == 2  # the last result is still shown

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
