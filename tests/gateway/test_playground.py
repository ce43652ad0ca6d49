"""The playground page served by the gateway, driven in headless Chromium (Debian's) by Playwright."""

import base64
import io
import os
import shutil

import httpx
import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags this closed network needs (no background calls to Google's hosts), as root in a container.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def gateway(start_gateway, controlnet_app):
    return start_gateway([controlnet_app.url], "--api-key", "page-key-0123456789")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def open_page(browser, gateway):
    """A fresh tab on the gateway's playground, the key typed in."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.goto(gateway.url + "/")
    page.fill("#apiKey", "page-key-0123456789")
    page.dispatch_event("#apiKey", "change")
    return context, page


@pytest.fixture
def page(browser, gateway):
    context, page = open_page(browser, gateway)
    page.fill("#num_inference_steps", "2")
    yield page
    context.close()


def test_generate_shows_the_image_with_its_seed_and_reuses_it(page, tmp_path):
    page.fill("#prompt", "a lighthouse")
    page.fill("#seed", "18446744073709551615")  # 2^64 - 1: must survive JavaScript's numbers
    page.fill("#num_images", "2")
    page.click("#generate")
    images = page.locator("#results img")
    expect(images).to_have_count(2, timeout=60_000)
    assert page.evaluate("() => [...document.querySelectorAll('#results img')].map(i => i.naturalWidth)") == [64, 64]
    expect(page.locator("#results figcaption").first).to_contain_text("seed 18446744073709551615")
    expect(page.locator("#results figcaption").nth(1)).to_contain_text("seed 0")
    expect(page.locator("#status")).to_contain_text("done in")
    page.locator("#results button", has_text="Use seed").nth(1).click()
    assert page.input_value("#seed") == "0"
    assert page.locator("#results a", has_text="Download").first.get_attribute("download") == \
        "image-18446744073709551615.png"
    page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)


def test_a_running_job_shows_a_progress_bar_of_its_steps_and_its_preview(browser, start_gateway, preview_app, tmp_path):
    context, page = open_page(browser, start_gateway([preview_app.url], "--api-key", "page-key-0123456789"))
    page.fill("#prompt", "a lighthouse")
    page.fill("#num_inference_steps", "150")
    page.click("#generate")
    expect(page.locator("#preview")).to_be_visible(timeout=60_000)
    expect(page.locator("#status")).to_contain_text("step ")
    value, maximum = page.evaluate("() => [document.querySelector('#progress').value, "
                                   "document.querySelector('#progress').max]")
    assert maximum == 151 and 0 < value < maximum  # PNDM's 151 steps, some of them done
    assert page.evaluate("() => document.querySelector('#preview').naturalWidth") == 32  # PREVIEW_SIDE
    page.screenshot(path=str(tmp_path / "running.png"), full_page=True)
    if os.environ.get("UPDATE_SCREENSHOT"):
        page.screenshot(path="images/playground.png", full_page=True)
    # 150 steps take what this machine takes: the bound is the job's own time limit (the gateway's default 300 s).
    expect(page.locator("#status")).to_contain_text("done in", timeout=300_000)
    expect(page.locator("#preview")).to_be_hidden()
    assert page.evaluate("() => document.querySelector('#progress').hidden")
    context.close()


def test_the_lora_picker_offers_the_baked_loras_and_sends_them_with_their_scales(page, gateway):
    listing = httpx.get(gateway.url + "/loras").json()["loras"]  # the replica's, relayed
    assert [lora["name"] for lora in listing] == ["ink", "style"] and all(lora["bytes"] > 0 for lora in listing)
    page.fill("#seed", "3")

    def generate() -> str:
        page.click("#generate")
        expect(page.locator("#status")).to_contain_text("done in", timeout=60_000)
        source = page.get_attribute("#results img", "src")
        page.evaluate("() => { document.querySelector('#status').textContent = ''; }")
        return source

    plain = generate()
    expect(page.locator("#loraPicker")).to_be_visible()
    page.click("#addLora")
    assert page.locator("#loraRows select option").all_inner_texts() == ["ink", "style"]
    page.select_option("#loraRows select", "style")
    page.fill("#loraRows input", "0.8")
    styled = generate()
    assert styled != plain
    for _ in range(4):  # at most MAX_LORAS rows (4 by default)
        page.click("#addLora") if page.is_enabled("#addLora") else None
    expect(page.locator("#loraRows .lora")).to_have_count(4)
    for _ in range(3):
        page.locator("#loraRows button", has_text="Remove").last.click()
    assert generate() == styled  # the same LoRA, the same scale, the same seed
    page.fill("#loraRows input", "5")
    page.click("#generate")
    expect(page.locator('[data-error="loras"]')).to_contain_text("less than or equal to 4", timeout=30_000)


def test_an_api_error_shows_next_to_the_field_it_names(page):
    page.fill("#width", "500")
    page.click("#generate")
    expect(page.locator('[data-error="width"]')).to_contain_text("must be a multiple of 8", timeout=30_000)
    assert page.get_attribute("#width", "aria-invalid") == "true"
    assert page.locator("#results img").count() == 0


def test_a_wrong_key_is_shown_and_the_key_stays_out_of_the_page_and_url(page, gateway):
    page.fill("#apiKey", "wrong-key")
    page.dispatch_event("#apiKey", "change")
    page.click("#generate")
    expect(page.locator('[data-error="apiKey"]')).to_contain_text("invalid apiKey", timeout=30_000)
    assert "wrong-key" not in page.url and "page-key-0123456789" not in page.content().replace('value="wrong-key"', "")
    assert page.evaluate("() => sessionStorage.getItem('apiKey')") == "wrong-key"


def test_inpainting_with_a_mask_drawn_by_pointer(page, tmp_path):
    picture = tmp_path / "in.png"
    Image.new("RGB", (72, 64), (30, 120, 200)).save(picture)
    page.set_input_files("#imageFile", str(picture))
    page.select_option("#use", "inpaint")
    mask = page.locator("#mask")
    expect(mask).to_be_visible()
    box = mask.bounding_box()
    page.mouse.move(box["x"] + 5, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    drawn = page.evaluate("() => maskImage()")
    mask_pixels = Image.open(io.BytesIO(base64.b64decode(drawn.split(",", 1)[1]))).convert("L")
    assert mask_pixels.getextrema() == (0, 255)  # some white (drawn), some black (kept)
    page.click("#generate")
    expect(page.locator("#results img")).to_have_count(1, timeout=60_000)
    assert page.evaluate("() => document.querySelector('#results img').naturalWidth") == 72


def test_works_on_a_phone_sized_screen_and_by_keyboard(browser, gateway):
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.goto(gateway.url + "/")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    page.focus("#apiKey")
    page.keyboard.type("page-key-0123456789")
    page.keyboard.press("Tab")  # commits the key (change event)
    page.fill("#num_inference_steps", "1")
    page.focus("#generate")
    page.keyboard.press("Enter")
    expect(page.locator("#results img")).to_have_count(1, timeout=60_000)
    context.close()


def test_the_forms_bounds_defaults_and_schedulers_come_from_the_replicas_document(browser, gateway, controlnet_app):
    fields = httpx.get(controlnet_app.url + "/openapi.json").json()[
        "paths"]["/"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    page = browser.new_page()
    page.goto(gateway.url + "/")
    schedulers = fields["scheduler"]["anyOf"][0]["enum"]
    expect(page.locator("#scheduler option")).to_have_count(1 + len(schedulers), timeout=30_000)
    assert page.eval_on_selector_all("#scheduler option", "os => os.map(o => o.value)")[1:] == schedulers
    assert "DPM++ 2M Karras" in schedulers  # an A1111 name the page never listed by hand
    steps = fields["num_inference_steps"]
    assert page.get_attribute("#num_inference_steps", "max") == str(steps["maximum"])
    assert page.input_value("#num_inference_steps") == str(steps["default"])
    assert page.get_attribute("#num_images", "max") == str(fields["num_images"]["maximum"])
    assert page.get_attribute("#width", "step") == "8" and page.get_attribute("#width", "max") == "2048"
    assert page.input_value("#strength") == "0.8" and page.input_value("#guidance_scale") == "7"
    page.close()


def test_the_form_offers_what_the_model_takes(browser, gateway, start_app, start_gateway, models):
    """FLUX.1-schnell takes no negative prompt, no clip_skip and no guidance: its page offers none of them."""
    flux = start_gateway([start_app({"MODEL_ID": str(models["flux"])}).url], "--api-key", "page-key-0123456789")
    for url, offered in ((gateway.url, True), (flux.url, False)):
        page = browser.new_page()
        page.goto(url + "/")
        expect(page.locator("#scheduler option")).to_have_count(5 if not offered else 21, timeout=30_000)
        for field in ("negative_prompt", "clip_skip"):
            assert page.is_visible(f"#{field}") is offered, (url, field)
        if not offered:
            assert page.input_value("#num_inference_steps") == "4" and page.input_value("#guidance_scale") == "0"
            assert page.get_attribute("#guidance_scale", "max") == "1" and page.get_attribute("#width", "step") == "8"
        page.close()
