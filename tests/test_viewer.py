"""The attention viewer in a real browser: headless Chromium (Debian's chromium + chromium-driver,
driven by selenium) against a real TorchServe serving a constructed two-block DINOv2 of ViT-Ti/8's
width (a Hugging Face directory) whose layer-0 [CLS] attends to bright patches (and, registered
beside it, a tiny random classifier and a tiny random CLIP for the explanation methods' predictions
list and prompt box). Screenshots and the measured redraw times go to build/test-artifacts/.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch

from scripts import REPO, VIEWER_PORT, archive
from scripts.serve import read_properties
from scripts.viewer import VIEWER_DIR, url_of
from testkit.checkpoints import brightness_seeking_state, encode, random_rgb
from testkit.torchserve import TorchServe, free_ports
from tests.support.archives import model_config
from vitscope.masks import threshold_masks
from vitscope.methods import METHODS
from vitscope.model.variants import get_variant
from vitscope.options import all_options

ARTIFACTS = REPO / "build" / "test-artifacts"
# The page's model: ViT-Ti/8's width, so 60 x 60 patches at 480 x 480 as ViT-S/8 and ViT-B/8 have, in two
# blocks (a Hugging Face DINOv2 directory, served as fine-tuned models are): every request of the page's
# tests costs the server a sixth of the twelve-block model's, and the slider still has layers to move through.
WIDTH = get_variant("dino_vitt8")
MODEL = "bright-vitt8"  # the directory's name: the archive's and the answers' model name
DEPTH = 2
SQUARE = (slice(160, 288), slice(256, 384))  # rows, columns of the bright square in the 480x480 image
TIMEOUT = 120


@dataclass
class Page:
    driver: object  # selenium WebDriver
    url: str  # the viewer, pointed at the private TorchServe
    inference: str
    management: str


@pytest.fixture(scope="module")
def page(torchserve: TorchServe, browser: Callable[[], Any]) -> Iterator[Page]:
    handler = functools.partial(QuietHandler, directory=str(VIEWER_DIR))
    static = http.server.ThreadingHTTPServer(("127.0.0.1", free_ports(1)[0]), handler)
    threading.Thread(target=static.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()  # a quick shutdown()
    origin = f"http://127.0.0.1:{static.server_address[1]}"
    tmp = Path(tempfile.mkdtemp(prefix="viewer-test-"))
    starting = ThreadPoolExecutor(1)  # chromium starts while the archive is made and TorchServe loads it
    driver_started = starting.submit(browser)
    try:
        weights = bright_hugging_face_model(tmp / MODEL)
        settings = model_config(tmp, {"attention_kernel": "sdpa"})  # no kernel measurement at load: the page is the test
        assert archive.main(["--weights", str(weights), "--export-path", str(tmp / "store"), "--config", str(settings)]) == 0
        cors = {
            "cors_allowed_origin": origin,
            "cors_allowed_methods": "GET, POST, OPTIONS",
            "cors_allowed_headers": "Authorization, Content-Type",
            "enable_model_api": "true",  # a test registers a second model (a distilled DeiT) beside it
        }
        with torchserve(tmp / "store", MODEL, extra=cors) as server:
            driver = driver_started.result()
            driver.set_script_timeout(TIMEOUT)
            inference, management = server.props["inference_address"], server.props["management_address"]
            yield Page(driver, f"{origin}/?server={inference}&management={management}", inference, management)
    finally:
        starting.shutdown()  # waits for the start, whatever went wrong meanwhile
        if driver_started.exception() is None:
            driver_started.result().quit()
        static.shutdown()
        static.server_close()
        shutil.rmtree(tmp, ignore_errors=True)


def bright_hugging_face_model(folder: Path) -> Path:
    """transformers' Dinov2Model of ``WIDTH``'s width and patch in ``DEPTH`` blocks, saved to ``folder``:
    the embeddings and block 0's queries and keys of ``brightness_seeking_state`` (its [CLS] attends
    to bright patches), the rest random."""
    transformers = pytest.importorskip("transformers")
    ours = brightness_seeking_state(1.0, WIDTH)
    query, key, value = ours["blocks.0.attn.qkv.weight"].chunk(3)
    query_bias, key_bias, value_bias = ours["blocks.0.attn.qkv.bias"].chunk(3)
    attention = "encoder.layer.0.attention."
    embeddings = "embeddings.patch_embeddings.projection."
    constructed = {
        f"{embeddings}weight": ours["patch_embed.proj.weight"],
        f"{embeddings}bias": ours["patch_embed.proj.bias"],
        "embeddings.cls_token": ours["cls_token"],
        "embeddings.position_embeddings": ours["pos_embed"],
        **{f"{attention}{name}_proj.weight": w for name, w in (("q", query), ("k", key), ("v", value))},
        **{f"{attention}{name}_proj.bias": b for name, b in (("q", query_bias), ("k", key_bias), ("v", value_bias))},
    }
    torch.manual_seed(0)
    config = transformers.Dinov2Config(
        hidden_size=WIDTH.embed_dim,
        num_attention_heads=WIDTH.num_heads,
        num_hidden_layers=DEPTH,
        patch_size=WIDTH.patch_size,
        image_size=224,
    )
    model = transformers.Dinov2Model(config)
    with torch.no_grad():
        for name, tensor in constructed.items():
            model.get_parameter(name).copy_(tensor)
    model.save_pretrained(folder)
    return folder


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def bright_square_png(path: Path) -> Path:
    image = np.full((480, 480, 3), 40, np.uint8)
    image[SQUARE] = 230
    path.write_bytes(encode(image))
    return path


def open_viewer(page: Page):
    from selenium.webdriver.support.ui import WebDriverWait

    page.driver.get(page.url)
    WebDriverWait(page.driver, 30).until(lambda d: "Models served" in d.find_element("id", "status").text)
    return page.driver


def upload(driver, path: Path) -> None:
    """Choose a file and wait until the page has the new response drawn (or its error shown)."""
    from selenium.webdriver.support.ui import WebDriverWait

    before = driver.execute_script("return window.viewer.state.requestId")
    driver.find_element("id", "file").send_keys(str(path))
    WebDriverWait(driver, TIMEOUT).until(
        lambda d: d.execute_script("return window.viewer.state.requestId") > before and not d.find_element("id", "loading").is_displayed()
    )


def console_errors(driver, allowed: tuple[str, ...] = ()) -> list[str]:
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and not any(text in entry["message"] for text in allowed)
    ]


def screenshot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / name))


def test_bright_square_is_where_the_overlay_is_hottest(page: Page, tmp_path: Path) -> None:
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    driver = open_viewer(page)
    assert driver.find_element("id", "model").get_attribute("value") == MODEL  # picked from the management API's list
    upload(driver, bright_square_png(tmp_path / "square.png"))
    doc = driver.execute_script("return window.viewer.state.doc")
    assert (doc["model"], doc["image_size"], doc["grid"], doc["upsampled"]) == (MODEL, [480, 480], [60, 60], False)
    assert doc["layers"] == list(range(DEPTH))  # one request for every layer: the slider needs no other
    layer = driver.find_element("id", "layer")
    layer.send_keys(Keys.HOME)  # keyboard: layer 0, the block that seeks brightness
    Select(driver.find_element("id", "cmap")).select_by_value("gray")
    driver.find_element("id", "opacity").send_keys(Keys.END)  # opacity 1: the overlay shows the map alone
    assert driver.find_element("id", "layer-value").text == "0"
    assert driver.execute_script("return window.viewer.state.requestId") == 1  # still the first request
    pixels = driver.execute_script(
        "const c = document.getElementById('overlay');"
        "return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)];"
    )
    width, height, data = pixels
    rgba = np.asarray(data, dtype=np.int32).reshape(height, width, 4)
    outline = rgba[..., 1] > rgba[..., 0] + 60  # the green mask outline is not part of the map
    luminance = np.where(outline, 0, rgba[..., :3].sum(axis=-1))
    hottest = np.argwhere(luminance >= np.percentile(luminance, 99.5))
    rows, cols = hottest[:, 0], hottest[:, 1]
    assert (width, height) == (480, 480)
    assert rows.min() >= SQUARE[0].start and rows.max() < SQUARE[0].stop, (rows.min(), rows.max())
    assert cols.min() >= SQUARE[1].start and cols.max() < SQUARE[1].stop, (cols.min(), cols.max())
    screenshot(driver, "viewer-bright-square.png")
    assert console_errors(driver) == []


def test_threshold_slider_recomputes_the_mask_in_the_page(page: Page, tmp_path: Path) -> None:
    from selenium.webdriver.common.keys import Keys

    driver = open_viewer(page)
    upload(driver, bright_square_png(tmp_path / "square.png"))
    area = driver.find_element("id", "mask-area")
    threshold = driver.find_element("id", "mask")
    first = int(area.get_attribute("data-patches"))
    for _ in range(4):
        threshold.send_keys(Keys.ARROW_LEFT)  # 0.6 -> 0.4 of the mass
    second = int(area.get_attribute("data-patches"))
    assert 0 < second < first
    assert driver.execute_script("return window.viewer.state.requestId") == 1  # no new request
    # the page's masks are the server's: vitscope/masks.py on the same map
    doc = driver.execute_script("return window.viewer.state.doc")
    head = np.asarray(doc["attention"][DEPTH - 1][2], dtype=np.float64)  # the last layer, head 2
    page_mask = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "import('./js/maps.js').then((m) => {"
        "  const map = Float64Array.from(arguments[0].flat());"
        "  done(Array.from(m.thresholdMask(map, 0.6)));"
        "});",
        doc["attention"][DEPTH - 1][2],
    )
    np.testing.assert_array_equal(np.asarray(page_mask, bool).reshape(60, 60), threshold_masks(head, 0.6))
    # a slider move that needs no request: redraw times, measured in the page with performance.now()
    for key in (Keys.ARROW_RIGHT, Keys.ARROW_LEFT) * 5:
        threshold.send_keys(key)
    layer = driver.find_element("id", "layer")
    for key in (Keys.ARROW_LEFT, Keys.ARROW_RIGHT) * 5:
        layer.send_keys(key)
    redraws = driver.execute_script("return window.viewer.stats.redraws")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "viewer-redraw-ms.json").write_text(json.dumps({"model": MODEL, "image": [480, 480], "redraw_ms": redraws}))
    assert len(redraws) >= 20 and all(ms > 0 for ms in redraws)
    assert console_errors(driver) == []


def test_non_image_shows_the_servers_message_as_text(page: Page, tmp_path: Path) -> None:
    driver = open_viewer(page)
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"<b>this is not an image</b>")
    upload(driver, bad)
    error = driver.find_element("id", "error")
    assert error.is_displayed() and "400" in error.text and "not an image" in error.text
    assert driver.execute_script("return document.getElementById('error').children.length") == 0  # text, not HTML
    screenshot(driver, "viewer-error.png")
    # the only console error is the browser's own line about the 400 response
    assert console_errors(driver, allowed=("status of 400",)) == []


def test_narrow_window_and_labels(page: Page, tmp_path: Path) -> None:
    driver = open_viewer(page)
    upload(driver, bright_square_png(tmp_path / "square.png"))
    unlabelled = driver.execute_script(
        "return [...document.querySelectorAll('input, select')].filter((e) => !e.labels || e.labels.length === 0).map((e) => e.id)"
    )
    assert unlabelled == []
    driver.set_window_size(420, 900)
    try:
        assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        overlay = driver.find_element("id", "overlay")
        assert overlay.size["width"] <= 420 and overlay.is_displayed()
        screenshot(driver, "viewer-narrow.png")
    finally:
        driver.set_window_size(1280, 800)
    assert console_errors(driver) == []


def test_configs_allow_exactly_the_viewers_origin() -> None:
    local = read_properties(REPO / "config.properties")
    assert local["cors_allowed_origin"] == url_of(VIEWER_PORT).rstrip("/")
    assert {m.strip() for m in local["cors_allowed_methods"].split(",")} == {"GET", "POST", "OPTIONS"}
    assert "cors_allowed_origin" not in read_properties(REPO / "config.production.properties")
    scripts = [line for line in (VIEWER_DIR / "index.html").read_text().splitlines() if "<script" in line or "<link" in line]
    assert scripts and all("http" not in line for line in scripts)  # nothing from the internet: no CDN


def test_make_viewer_serves_the_page_and_stop_stops_it(tmp_path: Path, monkeypatch) -> None:
    """scripts.viewer (make viewer / make stop): loopback only, JavaScript modules with their MIME type."""
    import requests

    from scripts import viewer

    monkeypatch.setattr(viewer, "PID_FILE", tmp_path / "viewer.pid")
    port = free_ports(1)[0]
    url = viewer.start(port)
    try:
        assert url == f"http://127.0.0.1:{port}/"
        assert "vitscope: ViT attention viewer" in requests.get(url, timeout=10).text
        module = requests.get(url + "js/main.js", timeout=10)
        assert module.status_code == 200 and module.headers["Content-Type"].split(";")[0] == "text/javascript"
    finally:
        assert viewer.stop()
    with pytest.raises(requests.ConnectionError):
        for _ in range(50):  # the process exits within moments of SIGTERM
            requests.get(url, timeout=1)
            time.sleep(0.1)
    assert not viewer.stop()  # nothing left to stop


def test_rollout_hover_token_drop_and_downloads(page: Page, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = open_viewer(page)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    # the token lives in sessionStorage only
    driver.find_element("id", "token").send_keys("not-a-real-key")
    assert driver.execute_script("return [sessionStorage.length, localStorage.length]") == [1, 0]
    driver.find_element("id", "token").clear()
    driver.execute_script("sessionStorage.clear()")
    # drag and drop: a File dropped on the drop zone is sent like a chosen one (72x64, not square, but
    # near it: at the default short side 480 its request is 480x540, not the 480x720 a 96x64 one costs)
    before = driver.execute_script("return window.viewer.state.requestId")
    driver.execute_script(
        "const c = document.createElement('canvas'); c.width = 72; c.height = 64;"
        "c.toBlob((blob) => { const data = new DataTransfer(); data.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));"
        "document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true})); });"
    )
    WebDriverWait(driver, TIMEOUT).until(
        lambda d: d.execute_script("return window.viewer.state.requestId") > before and not d.find_element("id", "loading").is_displayed()
    )
    assert driver.execute_script("return window.viewer.state.doc.input_size") == [64, 72]  # not square: (H, W) in order
    # rollout: one map, asked per layer
    upload(driver, bright_square_png(tmp_path / "square.png"))
    Select(driver.find_element("id", "method")).select_by_value("rollout")
    WebDriverWait(driver, TIMEOUT).until(lambda d: d.execute_script("return window.viewer.state.doc.method") == "rollout")
    assert driver.find_element("id", "head-fusion").is_enabled()
    assert len(driver.find_elements("css selector", "#gallery button")) == 1
    assert f"rollout through layer {DEPTH - 1}" in driver.find_element("id", "caption").text
    # hover: the patch under the pointer (the canvas is shown at 480 px: one CSS pixel per image pixel)
    overlay = driver.find_element("id", "overlay")
    ActionChains(driver).move_to_element_with_offset(overlay, 300 - overlay.size["width"] // 2, 204 - overlay.size["height"] // 2).perform()
    assert driver.find_element("id", "hover").text.startswith("Patch row 25, column 37: ")
    # downloads: the current view and the raw response
    driver.find_element("id", "save-png").click()
    driver.find_element("id", "save-json").click()
    WebDriverWait(driver, 30).until(lambda _: {p.name for p in downloads.iterdir()} == {"square_attention.png", "square.json"})
    assert (downloads / "square_attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((downloads / "square.json").read_text())["method"] == "rollout"
    assert console_errors(driver) == []


def test_methods_and_their_options_come_from_the_servers_description(page: Page, tmp_path: Path) -> None:
    """The method list and each method's own controls are built from the describe API: the served
    registry's methods appear, and so would a method the page has never heard of."""
    from selenium.webdriver.support.ui import Select

    driver = open_viewer(page)
    method = Select(driver.find_element("id", "method"))
    assert [o.get_attribute("value") for o in method.options] == list(METHODS)
    method.select_by_value("rollout")
    fusion = Select(driver.find_element("id", "head-fusion"))
    assert [o.text for o in fusion.options] == list(all_options()["head_fusion"].choices)
    discard = driver.find_element("id", "discard-ratio")
    assert (discard.get_attribute("type"), discard.get_attribute("min"), discard.get_attribute("max")) == ("number", "0", "1")
    # a method only the (stubbed) server knows: listed, with a control for its own option, sent with the request
    new = {
        "name": "novel",
        "summary": "a method this page was never told about",
        "own_options": ["colours"],
        "options": [{"name": "colours", "type": "string", "choices": ["rgb", "grey"], "default": "grey", "help": "how"}],
        "outputs": [{"name": "attention"}],
    }
    driver.execute_async_script(
        "const [done, extra] = [arguments[arguments.length - 1], arguments[0]];"
        "const real = window.fetch;"
        "window.fetch = async (url, init) => {"
        "  const response = await real(url, init);"
        "  if (!String(url).includes('customized=true')) return response;"
        "  const [entry] = await response.json();"
        "  const meta = entry.customizedMetadata;"
        "  const description = typeof meta === 'string' ? JSON.parse(meta) : meta;"
        "  description.methods.push(extra);"
        "  return new Response(JSON.stringify([{...entry, customizedMetadata: description}]));"
        "};"
        "window.viewer.describe().then(() => done());",
        new,
    )
    assert [o.get_attribute("value") for o in Select(driver.find_element("id", "method")).options] == [*METHODS, "novel"]
    Select(driver.find_element("id", "method")).select_by_value("novel")
    colours = Select(driver.find_element("id", "colours"))
    assert [o.text for o in colours.options] == ["rgb", "grey"] and colours.first_selected_option.text == "grey"
    assert driver.find_elements("css selector", "#head-fusion") == []
    assert console_errors(driver) == []


def test_similarity_follows_a_click_computed_in_the_page(page: Page, tmp_path: Path) -> None:
    """method=similarity, a method the page learns from the description: one request brings the
    features (KServe v2, binary); each click then computes the similarity to that pixel's patch in the
    page, in under 50 ms at 480x480 (3600 patches) on ViT-Ti/8, equal to the server's map; hovering that patch reads 1."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = open_viewer(page)
    image = bright_square_png(tmp_path / "square.png")
    # the method first, then the image: its one request is the features' (test time: no attention
    # request before it; a method chosen after an image re-requests in the rollout test)
    Select(driver.find_element("id", "method")).select_by_value("similarity")
    upload(driver, image)
    WebDriverWait(driver, TIMEOUT).until(lambda d: d.execute_script("return window.viewer.state.doc.method") == "similarity")
    assert driver.find_element("id", "point").get_attribute("value") == "0,0"
    assert driver.execute_script("const f = window.viewer.state.features; return [f.dim, f.patches]") == [WIDTH.embed_dim, 3600]
    requests_made = driver.execute_script("return window.viewer.state.requestId")
    overlay = driver.find_element("id", "overlay")
    clicks = [(300, 204), (40, 40), (320, 220), (100, 400), (300, 204)]
    for x, y in clicks:  # the canvas shows one CSS pixel per image pixel
        offset = (x - overlay.size["width"] // 2, y - overlay.size["height"] // 2)
        ActionChains(driver).move_to_element_with_offset(overlay, *offset).click().perform()
    assert driver.execute_script("return window.viewer.state.requestId") == requests_made  # no request: computed in the page
    doc = driver.execute_script("return window.viewer.state.doc")
    assert (doc["patch"], np.shape(doc["similarity"])) == ([25, 37], (1, 60, 60))
    assert abs(doc["point"][0] - 300) <= 1 and abs(doc["point"][1] - 204) <= 1  # the pixel clicked (to the pointer's rounding)
    fields = {"method": "similarity", "point": ",".join(map(str, doc["point"])), "upsample": "false"}
    served = requests.post(f"{page.inference}/predictions/{MODEL}", files={"data": image.read_bytes()}, data=fields, timeout=TIMEOUT)
    assert served.status_code == 200, served.text
    np.testing.assert_allclose(doc["similarity"], served.json()["similarity"], atol=2e-3)  # features sent as float16
    ActionChains(driver).move_to_element_with_offset(overlay, 300 - overlay.size["width"] // 2, 204 - overlay.size["height"] // 2).perform()
    assert driver.find_element("id", "hover").text == "Patch row 25, column 37: 1.000"
    times = driver.execute_script("return window.viewer.stats.clicks")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "similarity_click_ms.json").write_text(json.dumps({"model": MODEL, "image": [480, 480], "clicks_ms": times}))
    screenshot(driver, "similarity_click.png")
    assert len(times) == len(clicks) and max(times) < 50, times
    assert len(driver.find_elements("css selector", "#gallery button")) == 1
    assert console_errors(driver) == []


def test_pca_colours_view(page: Page, tmp_path: Path) -> None:
    """method=pca, a colour image: drawn as it is (the bright square in colour, the dark ground black)."""
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = open_viewer(page)
    Select(driver.find_element("id", "method")).select_by_value("pca")  # then the image: one request, the colours
    upload(driver, bright_square_png(tmp_path / "square.png"))
    WebDriverWait(driver, TIMEOUT).until(lambda d: d.execute_script("return window.viewer.state.doc.method") == "pca")
    assert driver.execute_script("return window.viewer.state.maps.rgb") is True
    assert not driver.find_element("id", "faithfulness").is_enabled()  # colours: no one value per patch to order the patches by
    driver.find_element("id", "opacity").send_keys(Keys.END)  # opacity 1: the colours alone
    rgba = driver.execute_script(
        "const c = document.getElementById('overlay'); return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);"
    )
    pixels = np.asarray(rgba, dtype=np.int32).reshape(480, 480, 4)[..., :3]
    doc = driver.execute_script("return window.viewer.state.doc")
    colours = np.asarray(doc["pca"])  # (3, 60, 60)
    expected = np.clip(np.rint(colours.transpose(1, 2, 0) * 255), 0, 255).repeat(8, axis=0).repeat(8, axis=1)
    assert np.abs(pixels - expected).max() <= 1  # the page shows the server's colours, pixel for pixel
    assert len(driver.find_elements("css selector", "#gallery button")) == 1
    assert driver.find_element("id", "mask-area").text == "Mask: off."
    assert console_errors(driver) == []


def test_predictions_and_a_distilled_models_query_come_from_its_description(page: Page, tmp_path: Path) -> None:
    """A distilled DeiT registered beside the DINO model: choosing it builds its query and top_k
    controls from its description, and its answer's predictions are listed, most probable first, as
    the server sent them (both queries: the same predictions, other maps)."""
    from selenium.webdriver.support.ui import Select, WebDriverWait

    name = "deit_viewer"
    store = tmp_path / "store"
    args = ["--model", "timm:deit_small_distilled_patch16_224", "--weights", "random", "--name", name, "--export-path", str(store)]
    assert archive.main(args) == 0
    management = page.url.split("management=")[1]
    registered = requests.post(
        f"{management}/models",
        params={"url": (store / f"{name}.mar").as_uri(), "initial_workers": 1, "synchronous": "true"},
        timeout=TIMEOUT,
    )
    assert registered.status_code == 200, registered.text
    try:
        driver = open_viewer(page)
        driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "document.getElementById('model').value = arguments[0];"
            "window.viewer.describe().then(() => done());",
            name,
        )
        query = Select(driver.find_element("id", "query"))
        assert [o.text for o in query.options] == ["cls", "distillation"]
        assert driver.find_element("id", "top-k").get_attribute("type") == "number"
        assert driver.find_elements("css selector", "#labels") == []  # no text tower: no labels control
        driver.find_element("id", "top-k").send_keys("3")
        upload(driver, bright_square_png(tmp_path / "square.png"))
        WebDriverWait(driver, TIMEOUT).until(lambda d: d.find_element("id", "predictions").is_displayed())
        shown = [item.text for item in driver.find_elements("css selector", "#predictions li")]
        sent = driver.execute_script("return window.viewer.state.doc.predictions")
        assert len(shown) == 3 and shown == [f"{p['label']}: {100 * p['probability']:.1f}%" for p in sent]
        assert console_errors(driver) == []
    finally:
        requests.delete(f"{management}/models/{name}", timeout=TIMEOUT)


# The explanation methods' controls: a tiny random classifier with named classes (transformers' ViT) and a
# tiny random CLIP (transformers' CLIPModel, open_clip's BPE), registered beside the DINO model.
CLASSIFIER, CLIP = "viewer_pets", "viewer_clip"
CLASSES = {0: "cat", 1: "dog", 2: "car", 3: "tree"}
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "image_size": 32, "patch_size": 8}


@pytest.fixture(scope="module")
def explainers(page: Page, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """The page's TorchServe with the classifier and the CLIP registered too (unregistered after)."""
    transformers = pytest.importorskip("transformers")
    open_clip = pytest.importorskip("open_clip")
    tmp = tmp_path_factory.mktemp("explainers")
    torch.manual_seed(0)
    labelled = {"num_labels": len(CLASSES), "id2label": CLASSES, "label2id": {v: k for k, v in CLASSES.items()}}
    transformers.ViTForImageClassification(transformers.ViTConfig(**TINY, **labelled)).save_pretrained(tmp / CLASSIFIER)
    text = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 77}
    clip = transformers.CLIPConfig(text_config=text, vision_config=TINY, projection_dim=16)
    transformers.CLIPModel(clip).save_pretrained(tmp / CLIP)
    # no kernel measurement at load (a quicker registration); the test images as they are (8 x 8 patches), not resized to 480
    settings = model_config(tmp, {"attention_kernel": "sdpa", "short_side": 64})
    common = ["--export-path", str(tmp / "store"), "--config", str(settings)]
    assert archive.main(["--weights", str(tmp / CLASSIFIER), "--name", CLASSIFIER, *common]) == 0
    tokenizer = str(Path(open_clip.__file__).parent)  # bpe_simple_vocab_16e6.txt.gz
    assert archive.main(["--weights", str(tmp / CLIP), "--name", CLIP, "--tokenizer", tokenizer, *common]) == 0

    def register(name: str) -> requests.Response:
        params = {"url": (tmp / "store" / f"{name}.mar").as_uri(), "initial_workers": 1, "synchronous": "true"}
        return requests.post(f"{page.management}/models", params=params, timeout=TIMEOUT)

    with ThreadPoolExecutor(2) as pool:  # both workers start at once
        registered = list(pool.map(register, (CLASSIFIER, CLIP)))
    try:
        assert [r.status_code for r in registered] == [200, 200], [r.text for r in registered]
        yield page
    finally:
        for name, reply in zip((CLASSIFIER, CLIP), registered, strict=True):
            if reply.status_code == 200:
                requests.delete(f"{page.management}/models/{name}", timeout=TIMEOUT)


def choose_model(driver, name: str) -> None:
    """Type the model's name and read its description, as a change of the Model field does (no request)."""
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "document.getElementById('model').value = arguments[0];"
        "window.viewer.describe().then(() => done());",
        name,
    )


def record_requests(driver) -> None:
    """From now on, every multipart request's text fields are kept in window.sent (the image left out)."""
    driver.execute_script(
        "window.sent = []; const real = window.fetch;"
        "window.fetch = (url, init) => {"
        "  const texts = init?.body instanceof FormData ? [...init.body].filter(([, v]) => typeof v === 'string') : null;"
        "  if (texts) window.sent.push(Object.fromEntries(texts));"
        "  return real(url, init);"
        "};"
    )


def answered(driver, action: Callable[[], object]) -> dict:
    """Do ``action`` (which makes a request) and wait for its answer drawn, or its error shown: the fields sent."""
    from selenium.webdriver.support.ui import WebDriverWait

    before = driver.execute_script("return window.viewer.state.requestId")
    action()
    WebDriverWait(driver, TIMEOUT).until(
        lambda d: d.execute_script("return window.viewer.state.requestId") > before and not d.find_element("id", "loading").is_displayed()
    )
    return driver.execute_script("return window.sent.at(-1)")


def shown_title(driver) -> tuple[str, float]:
    """The map's title, ``<target>: score <s>``: the target part and the score."""
    title = driver.find_element("id", "map-title")
    assert title.is_displayed()
    named, score = title.text.rsplit(": score ", 1)
    return named, float(score)


def small_png(path: Path) -> Path:
    path.write_bytes(encode(random_rgb(64, 64, seed=4)))
    return path


def faithfulness_shown(driver) -> list[dict[str, Any]]:
    """The faithfulness panel's rows: the curve set's target, name and score, each AUC cell as shown and as
    data-auc ("map deletion", "random deletion", ...), and the curves drawn."""
    shown = []
    for row in driver.find_elements("css selector", "#faithfulness-panel tbody tr.faithfulness-entry"):
        cells = row.find_elements("css selector", "td.auc")
        shown.append(
            {
                "target": row.get_attribute("data-target"),
                "name": row.find_element("css selector", "th").text,
                "score": row.find_element("css selector", ".faithfulness-score").text,
                "aucs": {
                    f"{c.get_attribute('data-order')} {c.get_attribute('data-metric')}": (c.text, c.get_attribute("data-auc"))
                    for c in cells
                },
                "lines": len(row.find_elements("css selector", "svg.faithfulness-curves polyline.curve")),
            }
        )
    return shown


def assert_faithfulness_shown(driver, entries: list[dict]) -> list[str]:
    """The panel shows the server's ``faithfulness`` entries, one row each: every AUC to 3 decimals (the
    value itself in data-auc), the map's and the random order's, and four curves; the rows' names."""
    shown = faithfulness_shown(driver)
    assert driver.find_element("id", "faithfulness-panel").is_displayed() and len(shown) == len(entries)
    for row, entry in zip(shown, entries, strict=True):
        assert (row["target"], row["score"], row["lines"]) == (entry["target"], entry["score"], 4)
        for metric in ("deletion", "insertion"):
            for order, auc in (("map", entry[metric]["auc"]), ("random", entry["random"][metric]["auc"])):
                text, exact = row["aucs"][f"{order} {metric}"]
                assert float(exact) == auc and float(text) == pytest.approx(auc, abs=5e-4) and len(text.split(".")[1]) == 3
    return [row["name"] for row in shown]


def test_predictions_are_a_list_whose_classes_are_explained_on_click(explainers: Page, tmp_path: Path) -> None:
    """A head-only classifier: no prompt box; its predictions are buttons, and a click asks for that class's
    map (target=<index>) with legrad (or the explanation method selected), shown titled by the target and
    its score, the class marked as chosen. With faithfulness ticked, each answer's deletion and insertion
    AUCs (and the random order's) are shown in a panel, equal to the server's."""
    from selenium.webdriver.support.ui import Select

    driver = open_viewer(explainers)
    choose_model(driver, CLASSIFIER)
    assert not driver.find_element("id", "prompt-form").is_displayed()  # no text tower: no prompt box
    assert not driver.find_element("id", "faithfulness-panel").is_displayed()
    driver.find_element("id", "faithfulness").click()  # no image yet: no request
    record_requests(driver)
    image = small_png(tmp_path / "pets.png")
    sent = answered(driver, lambda: driver.find_element("id", "file").send_keys(str(image)))
    assert sent["faithfulness"] == "deletion,insertion"
    doc = driver.execute_script("return window.viewer.state.doc")
    (entry,) = doc["faithfulness"]
    top = doc["predictions"][0]  # attention, a map without a target: scored on the classifier's top class
    assert (entry["target"], entry["score"]) == (f"class {top['index']}", "probability")
    named = f"layer 1 head mean, class {top['index']} ({top['label']})"  # the deepest layer's, as the server ranks it
    assert assert_faithfulness_shown(driver, [entry]) == [named]
    predictions = driver.execute_script("return window.viewer.state.doc.predictions")
    buttons = driver.find_elements("css selector", "#predictions li button")
    assert len(predictions) == len(CLASSES)
    assert [b.text for b in buttons] == [f"{p['label']}: {100 * p['probability']:.1f}%" for p in predictions]
    assert driver.find_element("id", "map-title").is_displayed() is False  # attention: no target to title
    pick = predictions[2]
    sent = answered(driver, buttons[2].click)
    assert (sent["method"], sent["target"]) == ("legrad", str(pick["index"])) and "layer" not in sent
    doc = driver.execute_script("return window.viewer.state.doc")
    assert doc["method"] == "legrad" and np.shape(doc["relevance"]) == (1, *doc["grid"])
    (target,) = doc["targets"]
    assert (target["target"], target["index"], target["label"]) == (f"class {pick['index']}", pick["index"], pick["label"])
    named, score = shown_title(driver)
    assert named == f"class {pick['index']} ({pick['label']})" and score == pytest.approx(target["score"], rel=1e-2)
    assert sent["faithfulness"] == "deletion,insertion"
    direct = requests.post(
        f"{explainers.inference}/predictions/{CLASSIFIER}", files={"data": image.read_bytes()}, data=sent, timeout=TIMEOUT
    )
    assert direct.status_code == 200, direct.text
    (served,) = direct.json()["faithfulness"]  # the server's own, asked directly
    assert assert_faithfulness_shown(driver, [served]) == [named]
    assert doc["faithfulness"] == [served] and len(served["deletion"]["curve"]) == 17  # 16 steps, the default
    screenshot(driver, "viewer-faithfulness.png")
    pressed = [b.get_attribute("aria-pressed") for b in driver.find_elements("css selector", "#predictions li button")]
    assert pressed == ["false", "false", "true", "false"]
    gallery = driver.find_elements("css selector", "#gallery button")
    assert [b.text for b in gallery] == [driver.find_element("id", "map-title").text]  # the one map, not a head mean
    assert Select(driver.find_element("id", "method")).first_selected_option.text == "legrad"
    screenshot(driver, "viewer-explain-class.png")
    # an explanation method already selected is the one a click uses (faithfulness unticked, with no request: an answer without it)
    driver.execute_script("document.getElementById('faithfulness').checked = false")
    sent = answered(driver, lambda: Select(driver.find_element("id", "method")).select_by_value("gradcam"))
    assert "faithfulness" not in sent and not driver.find_element("id", "faithfulness-panel").is_displayed()
    pick = predictions[0]
    sent = answered(driver, driver.find_elements("css selector", "#predictions li button")[0].click)
    assert (sent["method"], sent["target"]) == ("gradcam", str(pick["index"]))
    assert driver.execute_script("return window.viewer.state.doc.method") == "gradcam"
    assert shown_title(driver)[0] == f"class {pick['index']} ({pick['label']})"
    assert driver.find_element("css selector", "#predictions li button").get_attribute("aria-pressed") == "true"
    assert console_errors(driver) == []


def test_a_text_towers_prompt_box_explains_prompts_and_shows_the_servers_400(explainers: Page, tmp_path: Path) -> None:
    """A CLIP: the prompt box appears; prompts separated by | give one map each (target=text:...|text:...),
    each titled by its prompt and score; an empty prompt is sent and the server's 400 message shown;
    the next prompt works."""
    from selenium.webdriver.common.keys import Keys

    driver = open_viewer(explainers)
    choose_model(driver, CLIP)
    box = driver.find_element("id", "prompt-form")
    assert box.is_displayed()
    record_requests(driver)
    image = small_png(tmp_path / "clip.png")
    answered(driver, lambda: driver.find_element("id", "file").send_keys(str(image)))
    prompt = driver.find_element("id", "prompt")
    prompt.send_keys("a red car | a dog")
    sent = answered(driver, lambda: prompt.send_keys(Keys.ENTER))
    assert (sent["method"], sent["target"]) == ("legrad", "text:a red car|text:a dog")
    doc = driver.execute_script("return window.viewer.state.doc")
    assert [t["target"] for t in doc["targets"]] == ["text:a red car", "text:a dog"]
    assert np.shape(doc["relevance"]) == (2, *doc["grid"])  # two maps, one per prompt
    named, score = shown_title(driver)
    assert named == "text:a red car" and score == pytest.approx(doc["targets"][0]["score"], rel=1e-2, abs=1e-3)
    gallery = driver.find_elements("css selector", "#gallery button")
    assert [b.text.rsplit(": score", 1)[0] for b in gallery] == ["text:a red car", "text:a dog"]
    gallery[1].click()  # the second prompt's map: no request
    assert shown_title(driver)[0] == "text:a dog" and driver.execute_script("return window.viewer.state.selected") == 1
    # an empty prompt: sent as it is, and the server's own message shown
    prompt.clear()
    sent = answered(driver, driver.find_element("id", "explain-prompt").click)
    assert sent["target"] == "text:"
    direct = requests.post(f"{explainers.inference}/predictions/{CLIP}", files={"data": image.read_bytes()}, data=sent, timeout=TIMEOUT)
    assert direct.status_code == 400
    error = driver.find_element("id", "error")
    assert error.is_displayed() and error.text == f"400: {direct.json()['error']}"
    screenshot(driver, "viewer-empty-prompt.png")
    # ... and the viewer goes on
    prompt.send_keys("a cat")
    answered(driver, lambda: prompt.send_keys(Keys.ENTER))
    assert not error.is_displayed()
    assert [t["target"] for t in driver.execute_script("return window.viewer.state.doc.targets")] == ["text:a cat"]
    assert shown_title(driver)[0] == "text:a cat"
    assert console_errors(driver, allowed=("status of 400",)) == []
