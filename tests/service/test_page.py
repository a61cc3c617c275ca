"""The demo page in headless Chromium: upload an image, see the top-3 classes and the grid of similar images,
add it to the index (with an id and metadata typed, or a problem shown beside the form)."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time

import httpx2
import pytest
import uvicorn
from factories import DATA_NAME, MACHINE, colour_images, wait_ready

from benchmarks.harness.images import png_bytes
from contract.bundle import load_bundle
from service.app import create_app
from service.build_index import BuildOptions, build
from service.settings import Settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")


KEY = "page-test-key"


@pytest.fixture(scope="module", params=["open", "keyed", "unlike"])
def base_url(request, bundle_dir, index_copy, image_folder, tmp_path_factory):
    """The app served by uvicorn in a thread of this process, on a free loopback port: without an API key, with
    one, and with a bundle whose familiarity threshold every image exceeds (every answer unlike the training data);
    that bundle's manifest differs, so it gets an index of its own."""
    if request.param == "unlike":
        root = tmp_path_factory.mktemp("unlike")
        bundle_dir = shutil.copytree(bundle_dir, root / "bundle")
        manifest = json.loads((bundle_dir / "manifest.json").read_text())
        manifest["familiarity"]["threshold"] = 1e-3  # below any distance
        (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
        index_copy = root / "index"
        build(str(bundle_dir), [str(image_folder)], str(index_copy), BuildOptions(runtime="torch-fp32"))
    settings = Settings(bundle=bundle_dir, index=index_copy, api_key=KEY if request.param == "keyed" else None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)
    with httpx2.Client(base_url=url, headers={"X-API-Key": KEY}) as client:
        assert wait_ready(client)["ready"]
    yield url
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def page(base_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page()
        yield page
        browser.close()


def test_upload_shows_predictions_and_similar_images(page, base_url, tmp_path, request, bundle_dir):
    image = tmp_path / "query.png"
    image.write_bytes(png_bytes(colour_images(1, size=48, seed=5)[0][2]))  # grey, another size
    page.goto(base_url + "/")
    page.evaluate("sessionStorage.clear()")
    page.set_input_files("#file", str(image))
    if "keyed" in request.node.callspec.id:  # the page asks for the key, then answers
        page.locator("#error").wait_for(state="visible")
        assert "needs an API key" in page.locator("#error").inner_text()
        page.fill("#key", KEY)
        page.click("#key-form button")
        assert page.locator("#key-form").is_hidden()
    page.wait_for_function("document.querySelectorAll('#grid img').length === 12")
    predictions = page.locator("#predictions li")
    assert predictions.count() == 3
    assert "%" in predictions.nth(0).inner_text()
    page.wait_for_function("[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth)")
    assert page.locator("#grid img").first.evaluate("i => i.naturalWidth") == 16
    assert page.locator("#grid figcaption").first.inner_text().startswith("grey")
    top1 = json.loads((bundle_dir / "manifest.json").read_text())["metrics"]["top1"]
    with httpx2.Client(base_url=base_url, headers={"X-API-Key": KEY}) as client:
        name = client.get("/version").json()["model"]  # the "unlike" bundle's manifest differs: so does its name
    assert name.startswith(load_bundle(bundle_dir).name[:-12])
    assert page.locator("#model").inner_text() == f"{name} · linear top-1 {100 * top1:.1f}% " \
                                                 f"on {DATA_NAME} · trained 1 epochs in 0.05 h"
    assert page.locator("#model").get_attribute("title") == MACHINE
    assert page.locator("#error").is_hidden()
    assert page.locator("#unlike").is_visible() == (request.node.callspec.id.startswith("unlike"))


def test_an_added_image_is_then_found_first(page, base_url, tmp_path, request):
    image = tmp_path / f"added-{request.node.callspec.id}.png"
    image.write_bytes(png_bytes(colour_images(1, size=24, seed=7)[0][1]))
    page.goto(base_url + "/")
    if "keyed" in request.node.callspec.id:
        page.evaluate(f"sessionStorage.setItem('apiKey', '{KEY}')")
    page.set_input_files("#file", str(image))
    page.locator("#add").wait_for(state="visible")
    page.click("#add")
    page.wait_for_function("document.querySelector('#added').textContent.startsWith('added as')")
    assert page.locator("#added").inner_text().startswith(f"added as {image.name};")
    page.wait_for_function(f"document.querySelector('#grid figcaption')?.textContent === '{image.name} 1.00'")
    assert page.locator("#error").is_hidden()


def test_a_bad_file_shows_the_problem(page, base_url, tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image")
    page.goto(base_url + "/")
    page.set_input_files("#file", str(junk))
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert "not an image in a supported format" in error.inner_text()


def test_an_image_is_added_with_the_id_and_metadata_typed(page, base_url, tmp_path, request):
    param = request.node.callspec.id
    image = tmp_path / "picked.png"
    image.write_bytes(png_bytes(colour_images(1, size=20, seed=8)[0][3]))
    id = f"page/{param}/red"
    page.goto(base_url + "/")
    if "keyed" in param:
        page.evaluate(f"sessionStorage.setItem('apiKey', '{KEY}')")
    page.set_input_files("#file", str(image))
    page.locator("#add").wait_for(state="visible")
    page.fill("#add-id", id)
    page.fill("#add-metadata", "source=page, shade = dark,year=2024")
    page.click("#add")
    page.wait_for_function("document.querySelector('#added').textContent !== ''")
    with httpx2.Client(base_url=base_url, headers={"X-API-Key": KEY}) as client:
        count = client.get("/index").json()["count"]
        assert page.locator("#added").inner_text() == f"added as {id}; {count} images indexed"
        indexed = client.get(f"/index/images/{id}").json()
        assert indexed["metadata"] == {"source": "page", "shade": "dark", "year": "2024"}, indexed
        assert client.get(f"/index/images/{image.name}").status_code == 404  # the id typed, not the file's name
        assert page.input_value("#add-id") == ""  # cleared: the next image must not replace this one unasked
        page.fill("#add-id", id)
        page.fill("#add-metadata", '{"source": "page", "year": 2024}')  # JSON: numbers stay numbers
        page.click("#add")
        page.wait_for_function("document.querySelector('#added').textContent.startsWith('replaced as')")
        assert page.locator("#added").inner_text() == f"replaced as {id}; {count} images indexed"
        assert client.get(f"/index/images/{id}").json()["metadata"] == {"source": "page", "year": 2024}
        assert client.get("/index").json()["count"] == count
    assert page.locator("#add-error").is_hidden()


def test_adding_shows_the_problem_beside_the_form(page, base_url, tmp_path, request):
    junk = tmp_path / "junk-to-add.png"
    junk.write_bytes(b"this is not an image")
    page.goto(base_url + "/")
    if "keyed" in request.node.callspec.id:
        page.evaluate(f"sessionStorage.setItem('apiKey', '{KEY}')")
    page.set_input_files("#file", str(junk))
    page.locator("#add").wait_for(state="visible")
    with httpx2.Client(base_url=base_url, headers={"X-API-Key": KEY}) as client:
        count = client.get("/index").json()["count"]
        error = page.locator("#add-error")
        for metadata, shown in [
                ("", "images[0] (junk-to-add.png): not an image in a supported format"),  # the service's 415
                ('{"owner": {"name": "me"}}', "metadata[0] is not a JSON object of strings and numbers"),  # its 422
                ("owner", 'metadata: "owner" is not key=value')]:  # the page's own check, nothing sent
            page.fill("#add-metadata", metadata)
            page.click("#add")
            page.wait_for_function("t => document.querySelector('#add-error').textContent.includes(t)", arg=shown)
            assert error.is_visible() and page.locator("#added").inner_text() == ""
        assert client.get("/index").json()["count"] == count
        assert client.get(f"/index/images/{junk.name}").status_code == 404
