"""The page in headless Chromium on the gated colour model: queue, reload, other origins.

Fast browser checks that need no real model: the page shows its place in the queue,
a reload cancels the job it started, a page of another origin cannot start a job, and
the first screen has no serious accessibility problem (axe-core). A segmenter's page (the
small trained segmenter of the tests) colours its classes and explains the clicked one.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.support.serve import (
    CHROMIUM,
    gated_model,
    live_server,
    other_origin_page,
    red_green_png,
    require,
    serious_accessibility_problems,
    sync_playwright,
    wait_until,
)

require("fastapi")
from sacam.serve import create_app  # noqa: E402


@pytest.fixture
def browser():  # noqa: ANN201
    start = sync_playwright()
    with start() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


def test_queue_position_shows_and_a_reload_cancels_the_job(browser) -> None:  # noqa: ANN001
    loaded = gated_model()
    net = loaded.model
    app = create_app(loaded)
    with live_server(app) as base:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(base + "/")
        page.wait_for_selector("#samples button")
        page.click("#samples button[data-sample='chelsea']")
        page.wait_for_function("() => !document.querySelector('#explain').disabled")
        net.gate.clear()  # the model is busy with someone else's job
        other = httpx.post(
            f"{base}/api/jobs/explain",
            files={"image": ("x.png", red_green_png(), "image/png")},
            data={"methods": ["grad-cam"]},
        ).json()
        page.click("#explain")
        page.wait_for_function(
            "() => document.querySelector('#stage').textContent"
            ".includes('waiting for the model: 1 request ahead')"
        )
        job_id = page.get_attribute("#job", "data-job-id")
        assert job_id
        page.reload()  # the page goes away: its job is cancelled, not orphaned
        wait_until(
            lambda: httpx.get(f"{base}/api/jobs/{job_id}").json()["status"] == "cancelled",
            "the reloaded page's job to be cancelled",
        )
        net.gate.set()
        done = lambda: httpx.get(f"{base}/api/jobs/{other['job_id']}").json()["status"]  # noqa: E731
        wait_until(lambda: done() == "done", "the other client's job to finish")


def test_the_page_counts_forward_passes_while_a_job_runs(browser) -> None:  # noqa: ANN001
    loaded = gated_model()
    net = loaded.model
    with live_server(create_app(loaded)) as base:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(base + "/")
        page.wait_for_selector("#samples button")
        page.click("#samples button[data-sample='chelsea']")
        page.check("#methods input[value='score-cam']")
        page.wait_for_function("() => !document.querySelector('#explain').disabled")
        passes = httpx.get(f"{base}/api/methods").json()["methods"]
        planned = {m["name"]: m["passes"] for m in passes}
        net.open_calls = net.calls + 2  # classifying and SA-CAM's pass; Score-CAM waits
        page.click("#explain")
        wait_until(lambda: not net.gate.is_set(), "Score-CAM to reach the model")
        try:
            page.wait_for_function(
                "() => document.querySelector('#stage').textContent.startsWith('score-cam')"
            )
            stage = page.inner_text("#stage")
        finally:
            net.gate.set()
        # classifying and SA-CAM made one pass each; Score-CAM's are still to come
        total = 2 + planned["score-cam"]
        assert stage.startswith(f"score-cam · 2 of {total} passes · "), stage
        assert " s elapsed · " in stage and stage.endswith(" left"), stage
        page.locator("#job").wait_for(state="hidden")


def test_a_page_of_another_origin_cannot_start_a_job(browser) -> None:  # noqa: ANN001
    app = create_app(gated_model())
    worker = app.state.serve.worker
    with live_server(app) as base:
        attack = f"""<!doctype html><title>elsewhere</title><script>
        const form = new FormData();
        form.append("methods", "grad-cam");
        form.append("image", new Blob([new Uint8Array(64)], {{type: "image/png"}}), "x.png");
        fetch("{base}/api/jobs/explain", {{method: "POST", body: form, mode: "no-cors"}});
        </script>"""
        with other_origin_page(attack) as elsewhere:
            page = browser.new_page()
            with page.expect_response(f"{base}/api/jobs/explain") as response:
                page.goto(elsewhere)
            assert response.value.status == 403
        assert [j for j in worker.jobs() if j.kind == "explain"] == []
        # the same request from the app's own page is accepted
        page.goto(base + "/")
        status = page.evaluate(
            """async () => {
                const form = new FormData();
                form.append("methods", "grad-cam");
                const png = await (await fetch("/api/samples/coffee")).blob();
                form.append("image", png, "coffee.png");
                return (await fetch("/api/jobs/explain", {method: "POST", body: form})).status;
            }"""
        )
        assert status == 202


def test_first_screen_is_accessible_and_fits_a_phone(browser) -> None:  # noqa: ANN001
    with live_server(create_app(gated_model())) as base:
        for width in (390, 1440, 1920):
            context = browser.new_context(viewport={"width": width, "height": 900}, bypass_csp=True)
            page = context.new_page()
            page.goto(base + "/")
            page.wait_for_selector("#samples button")
            assert page.evaluate("() => document.documentElement.scrollWidth") <= width
            if width == 1440:  # the Explain button is on the first screen
                box = page.locator("#explain").bounding_box()
                assert box is not None and box["y"] + box["height"] <= 900
            assert serious_accessibility_problems(page) == []
            context.close()


def test_an_expired_result_says_so_and_offers_to_explain_again(browser) -> None:  # noqa: ANN001
    with live_server(create_app(gated_model(), keep_results=1)) as base:
        page = browser.new_page()
        page.goto(base + "/")
        page.wait_for_selector("#samples button")
        page.click("#samples button[data-sample='coffee']")
        page.click("#explain")
        page.wait_for_selector(".card[data-method='sa-cam']")
        page.locator("#job").wait_for(state="hidden")
        # the same browser explains another picture (another tab, say): it keeps one result
        status = page.evaluate(
            """async () => {
                const form = new FormData();
                form.append("methods", "grad-cam");
                form.append("image", await (await fetch("/api/samples/rocket")).blob(), "r.png");
                return (await fetch("/api/explain", {method: "POST", body: form})).status;
            }"""
        )
        assert status == 200
        page.click("#curves")
        page.wait_for_function(
            "() => document.querySelector('#message').textContent.includes('has expired')"
        )
        assert "Explain the image again" in page.inner_text("#message")
        page.click("#retry-button")
        page.wait_for_function(
            "() => document.querySelector('#message').textContent.startsWith('explained')"
        )
        page.click("#curves")
        page.locator("#auc-table").wait_for(state="visible")


def tab_to(page, selector: str, presses: int = 80) -> None:  # noqa: ANN001
    """Press Tab until the focused element matches ``selector`` (fails after ``presses``)."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        if page.evaluate("s => document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"Tab never reached {selector}")


def test_the_page_works_from_the_keyboard_and_the_first_result_fits(browser) -> None:  # noqa: ANN001
    # keyboard only: a sample photo, Explain, then another class; at 1440 x 900 the
    # controls and the first map are on the first screen
    with live_server(create_app(gated_model())) as base:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(base + "/")
        page.wait_for_selector("#samples button")
        tab_to(page, "#samples button[data-sample='coffee']")
        page.keyboard.press("Enter")
        page.wait_for_function("() => !document.querySelector('#explain').disabled")
        tab_to(page, "#explain")
        page.keyboard.press("Enter")
        page.wait_for_selector(".card[data-method='sa-cam'] img.overlay")
        page.locator("#job").wait_for(state="hidden")
        for selector in ("#explain", ".card[data-method='sa-cam']"):
            box = page.locator(selector).bounding_box()
            assert box is not None and box["y"] + box["height"] <= 900, (selector, box)
            assert box["x"] + box["width"] <= 1440, (selector, box)
        first = page.inner_text("#explained")
        tab_to(page, "#predictions button:not(.active)")
        page.keyboard.press("Enter")
        page.wait_for_function(
            "t => document.querySelector('#explained').textContent !== t", arg=first
        )
        page.locator("#job").wait_for(state="hidden")
        tab_to(page, "#class-input")
        page.keyboard.type("blue")
        page.keyboard.press("Enter")
        page.wait_for_function(
            "() => document.querySelector('#explained').textContent.includes('blue')"
        )


def test_a_segmenter_page_colours_the_classes_and_explains_a_clicked_one(browser) -> None:  # noqa: ANN001
    from tests.serve.test_segmentation import scene_png, segmenter_model

    png, truth = scene_png()
    with live_server(create_app(segmenter_model(), task="segmentation")) as base:
        context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        page = context.new_page()
        page.goto(base + "/")
        page.wait_for_function(
            "() => document.querySelector('#explain').textContent === 'Segment image'"
        )
        assert page.is_checked("#methods input[value='grad-cam']")
        assert page.is_hidden("#curves-section")
        page.set_input_files("#file-input", files=[
            {"name": "scene.png", "mimeType": "image/png", "buffer": png}
        ])  # fmt: skip
        page.wait_for_function("() => !document.querySelector('#explain').disabled")
        page.click("#explain")
        page.wait_for_selector("#segment-legend button")
        legend = page.locator("#segment-legend button")
        assert legend.count() == 3
        assert {legend.nth(k).get_attribute("data-class") for k in range(3)} == {"0", "1", "2"}
        page.click("#segment-legend button[data-class='1']")  # the legend: the red square
        page.wait_for_selector("#maps .card[data-method='grad-cam'] img.overlay")
        text = page.text_content("#segment-explained") or ""
        assert text.startswith("Maps explain “red” (1), ")
        pressed = page.get_attribute("#segment-legend button[data-class='1']", "aria-pressed")
        assert pressed == "true"
        red = page.get_attribute("#maps .card[data-method='grad-cam'] img.overlay", "src")
        assert red and red.startswith("data:image/png;base64,")
        page.locator("#job").wait_for(state="hidden")
        # a pixel of the picture: the middle of the blue square picks class 2
        rows, cols = np.nonzero(truth == 2)
        view = page.locator("#segment-view img")
        box = view.bounding_box()
        assert box is not None
        x, y = (cols.mean() + 0.5) / 32 * box["width"], (rows.mean() + 0.5) / 32 * box["height"]
        view.click(position={"x": x, "y": y})
        page.wait_for_function(
            "() => document.querySelector('#segment-explained').textContent"
            ".startsWith('Maps explain “blue” (2), ')"
        )
        blue = page.get_attribute("#maps .card[data-method='grad-cam'] img.overlay", "src")
        assert blue and blue != red
        assert serious_accessibility_problems(page) == []
        context.close()
