"""The HTTP server: a real uvicorn server on a loopback port, real requests, and the page in Chromium."""
from __future__ import annotations

import concurrent.futures
import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from fmnist import runs, serve
from test_predict import as_product_photo, confident_correct

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained_run):
    port = free_port()
    config = uvicorn.Config(serve.create_app(trained_run, max_bytes=1_000_000), host="127.0.0.1", port=port,
                            log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not instance.started and time.time() < deadline:
        time.sleep(0.05)
    assert instance.started
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def photos(trained_run, real_dataset):
    """(JPEG bytes, true class name) of items the model classifies confidently."""
    _, chosen = confident_correct(trained_run, real_dataset)
    out = []
    for index in chosen:
        buffer = io.BytesIO()
        as_product_photo(real_dataset.test_images[index]).save(buffer, "JPEG", quality=90)
        out.append((buffer.getvalue(), runs.data.CLASS_NAMES[real_dataset.test_labels[index]]))
    return out


def test_health_and_page(server):
    health = httpx.get(f"{server}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok" and len(health.json()["classes"]) == 10
    page = httpx.get(server + "/")
    assert page.status_code == 200 and 'type="file"' in page.text and "predict" in page.text


def test_predict_raw_body_and_multipart(server, photos):
    raw, name = photos[0]
    reply = httpx.post(f"{server}/predict", content=raw, headers={"Content-Type": "image/jpeg"})
    assert reply.status_code == 200
    prediction = reply.json()["predictions"][0]
    assert prediction["top"][0]["class"] == name and len(prediction["top"]) == 3
    assert prediction["preprocessed"].startswith("data:image/png;base64,")
    files = [("file", (f"item{i}.jpg", raw, "image/jpeg")) for i, (raw, _) in enumerate(photos[:3])]
    several = httpx.post(f"{server}/predict", files=files)
    assert several.status_code == 200
    assert [p["top"][0]["class"] for p in several.json()["predictions"]] == [n for _, n in photos[:3]]
    assert [p["name"] for p in several.json()["predictions"]] == ["item0.jpg", "item1.jpg", "item2.jpg"]


def test_bad_requests_get_json_errors_and_server_keeps_serving(server, photos):
    cases = [
        (dict(content=b"hello", headers={"Content-Type": "text/plain"}), 415),
        (dict(content=b"\x00" * 1_200_000, headers={"Content-Type": "image/png"}), 413),
        (dict(content=os.urandom(5000), headers={"Content-Type": "image/png"}), 415),
        (dict(content=photos[0][0][:300], headers={"Content-Type": "image/jpeg"}), 400),
        (dict(files={"note": (None, "just text")}), 400),
    ]
    for kwargs, status in cases:
        reply = httpx.post(f"{server}/predict", **kwargs)
        assert reply.status_code == status, (status, reply.text)
        assert isinstance(reply.json()["detail"], str) and reply.json()["detail"]
    assert httpx.get(f"{server}/health").status_code == 200
    assert httpx.post(f"{server}/predict", content=photos[0][0], headers={"Content-Type": "image/jpeg"}).status_code == 200


def test_fifty_concurrent_requests(server, photos):
    def ask(index):
        raw, name = photos[index % len(photos)]
        reply = httpx.post(f"{server}/predict", content=raw, headers={"Content-Type": "image/jpeg"}, timeout=60)
        return reply.status_code, reply.json()["predictions"][0]["top"][0]["class"], name

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(ask, range(50)))
    assert all(status == 200 and got == expected for status, got, expected in answers)
    assert httpx.get(f"{server}/health").status_code == 200


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="Debian's chromium and chromium-driver are not installed")
def test_page_in_headless_chromium(server, photos, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,800"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        raw, name = photos[0]
        image = tmp_path / "upload.jpg"
        image.write_bytes(raw)
        driver.get(server + "/")
        driver.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results li"))
        shown = driver.find_elements(By.CSS_SELECTOR, "#results li")
        assert len(shown) == 3 and shown[0].get_attribute("data-class") == name
        assert driver.find_element(By.ID, "preprocessed").get_attribute("src").startswith("data:image/png")
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "serve-page.png"))
    finally:
        driver.quit()
