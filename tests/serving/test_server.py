"""The HTTP server: a real uvicorn server on a loopback port, real requests, and the page in Chromium."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import PIL.Image
import prometheus_client.parser
import pytest
import safetensors.torch

from fmnist import runs
from fmnist.core import errors
from fmnist.data import fashion, photos
from fmnist.nets import seedcnn
from fmnist.serving import limits, schema, server, transport
from tests.helpers import as_product_photo, confident_correct, free_port, png, png_header_only, run_cli, running

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def served(trained_run):
    app = server.create_app(trained_run, max_bytes=1_000_000, allowed_hosts=transport.LOOPBACK_NAMES)
    yield from running(app, log_level="warning")


@pytest.fixture(scope="module")
def impatient_server(trained_run):
    """Requests must arrive whole within 1 s: the deadline for slow and idle clients, made short."""
    yield from running(server.create_app(trained_run), log_level="info", request_timeout=1)


class Collected(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def server_log():
    """The records of uvicorn's server log, taken at the logger itself: uvicorn's own logging set-up stops them
    reaching the root logger (caplog's), and another server started in this process may have set its level."""
    logger, handler = logging.getLogger("uvicorn.error"), Collected()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture(scope="module")
def product_photos(trained_run, real_dataset):
    """(JPEG bytes, true class name) of items the model classifies confidently."""
    _, chosen = confident_correct(trained_run, real_dataset)
    out = []
    for index in chosen:
        buffer = io.BytesIO()
        as_product_photo(real_dataset.test_images[index]).save(buffer, "JPEG", quality=90)
        out.append((buffer.getvalue(), fashion.CLASS_NAMES[real_dataset.test_labels[index]]))
    return out


def test_health_and_page(served):
    health = httpx.get(f"{served}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok" and len(health.json()["classes"]) == 10
    assert "/" not in health.json()["run"]  # the run's name, never a path of the server's disk
    page = httpx.get(served + "/")
    assert page.status_code == 200 and 'type="file"' in page.text and "predict" in page.text


def test_predict_raw_body_and_multipart(served, product_photos):
    raw, name = product_photos[0]
    reply = httpx.post(f"{served}/predict", content=raw, headers={"Content-Type": "image/jpeg"})
    assert reply.status_code == 200
    prediction = reply.json()["predictions"][0]
    assert prediction["top"][0]["class"] == name and len(prediction["top"]) == 3
    assert prediction["preprocessed"].startswith("data:image/png;base64,")
    files = [("file", (f"item{i}.jpg", raw, "image/jpeg")) for i, (raw, _) in enumerate(product_photos[:3])]
    several = httpx.post(f"{served}/predict", files=files)
    assert several.status_code == 200
    assert [p["top"][0]["class"] for p in several.json()["predictions"]] == [n for _, n in product_photos[:3]]
    assert [p["name"] for p in several.json()["predictions"]] == ["item0.jpg", "item1.jpg", "item2.jpg"]


def test_bad_requests_get_json_errors_and_server_keeps_serving(served, product_photos):
    cases = [
        (dict(content=b"hello", headers={"Content-Type": "text/plain"}), 415),
        (dict(content=b"\x00" * 1_200_000, headers={"Content-Type": "image/png"}), 413),
        (dict(content=os.urandom(5000), headers={"Content-Type": "image/png"}), 415),
        (dict(content=product_photos[0][0][:300], headers={"Content-Type": "image/jpeg"}), 400),
        (dict(files={"note": (None, "just text")}), 400),
    ]
    for kwargs, status in cases:
        reply = httpx.post(f"{served}/predict", **kwargs)
        assert reply.status_code == status, (status, reply.text)
        assert isinstance(reply.json()["detail"], str) and reply.json()["detail"]
    assert httpx.get(f"{served}/health").status_code == 200
    assert (
        httpx.post(
            f"{served}/predict", content=product_photos[0][0], headers={"Content-Type": "image/jpeg"}
        ).status_code
        == 200
    )


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """/metrics parsed by Prometheus's own parser: {(sample name, sorted labels): value}."""
    reply = httpx.get(f"{url}/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in prometheus_client.parser.text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def test_metrics_count_requests_latency_batches_and_refusals(served, product_photos):
    before = scrape(served)
    photo = {"content": product_photos[0][0], "headers": {"Content-Type": "image/jpeg"}}
    assert httpx.post(f"{served}/predict", **photo).status_code == 200
    files = [("file", (f"item{i}.jpg", raw, "image/jpeg")) for i, (raw, _) in enumerate(product_photos[:3])]
    assert httpx.post(f"{served}/predict", files=files).status_code == 200
    assert httpx.post(f"{served}/predict", content=b"hello", headers={"Content-Type": "text/plain"}).status_code == 415
    assert httpx.get(f"{served}/no/such/path/{os.urandom(4).hex()}").status_code == 404
    after = scrape(served)

    def grew(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("fmnist_requests_total", route="/predict", status="200") == 2
    assert grew("fmnist_requests_total", route="/predict", status="415") == 1
    assert grew("fmnist_requests_total", route="other", status="404") == 1  # not one label per path asked for
    assert grew("fmnist_refusals_total", status="415") == 1 and grew("fmnist_refusals_total", status="404") == 1
    assert grew("fmnist_request_seconds_count", route="/predict") == 3
    assert grew("fmnist_request_seconds_sum", route="/predict") > 0
    assert grew("fmnist_batch_images_sum") == 4  # 1 image, then 3: every image through the model once
    assert 1 <= grew("fmnist_batch_images_count") <= 2
    assert after[("fmnist_work_queue_images", ())] == 0  # at rest: nothing admitted and unanswered


def test_the_openapi_schema_types_predict_and_real_answers_match_it(served, product_photos):
    spec = httpx.get(f"{served}/openapi.json").json()
    predict = spec["paths"]["/predict"]["post"]
    assert {"image/*", "application/octet-stream", "multipart/form-data"} <= set(predict["requestBody"]["content"])
    assert predict["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Predictions"
    }
    assert {"400", "413", "415", "503"} <= set(predict["responses"])
    assert set(spec["components"]["schemas"]["Prediction"]["properties"]) == {"name", "top", "preprocessed", "warning"}
    assert "/metrics" not in spec["paths"]
    reply = httpx.post(f"{served}/predict", content=product_photos[0][0], headers={"Content-Type": "image/jpeg"})
    answer = schema.Predictions.model_validate(reply.json())
    assert answer.predictions[0].top[0].class_name == product_photos[0][1]
    refused = httpx.post(f"{served}/predict", content=b"hello", headers={"Content-Type": "text/plain"})
    assert schema.Problem.model_validate(refused.json()).detail


def test_a_burst_of_200_concurrent_requests_is_all_answered_as_one_at_a_time(served, product_photos):
    async def burst() -> list:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)  # a connection each
        async with httpx.AsyncClient(limits=limits, timeout=120) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{served}/predict",
                        content=product_photos[i % len(product_photos)][0],
                        headers={"Content-Type": "image/jpeg"},
                    )
                    for i in range(200)
                )
            )

    replies = asyncio.run(burst())
    assert [reply.status_code for reply in replies] == [200] * 200
    alone = [
        httpx.post(f"{served}/predict", content=raw, headers={"Content-Type": "image/jpeg"}).json()
        for raw, _ in product_photos
    ]
    for i, reply in enumerate(replies):
        got, expected = reply.json()["predictions"][0], alone[i % len(product_photos)]["predictions"][0]
        assert [t["class"] for t in got["top"]] == [t["class"] for t in expected["top"]]
        assert got["top"][0]["class"] == product_photos[i % len(product_photos)][1]
        assert max(abs(a["probability"] - b["probability"]) for a, b in zip(got["top"], expected["top"])) <= 1e-6
        assert got["preprocessed"] == expected["preprocessed"]
    assert httpx.get(f"{served}/health").json()["work_queue"]["images"] == 0  # everything admitted was released


def test_half_open_connections_do_not_stop_predictions(served, product_photos):
    address = ("127.0.0.1", int(served.rsplit(":", 1)[1]))
    held = [socket.create_connection(address) for _ in range(300)]  # three times the old connection cap
    try:
        for sock in held:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
        reply = httpx.post(f"{served}/predict", content=product_photos[0][0], headers={"Content-Type": "image/jpeg"})
        assert reply.status_code == 200 and reply.json()["predictions"][0]["top"][0]["class"] == product_photos[0][1]
    finally:
        for sock in held:
            sock.close()


def test_a_full_work_queue_answers_503_with_retry_after(trained_run, product_photos):
    small = png(PIL.Image.new("L", (28, 28), 30))
    for url in running(server.create_app(trained_run, work_queue=2), log_level="warning"):
        files = [("file", (f"{i}.png", small, "image/png")) for i in range(3)]  # more than the queue holds
        refused = httpx.post(f"{url}/predict", files=files)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "work queue is full" in refused.json()["detail"]
        assert httpx.post(f"{url}/predict", files=files[:2]).status_code == 200  # within the bound: served
    queue = server.WorkQueue(max_images=4, max_bytes=100)
    queue.admit(3)
    with pytest.raises(errors.Busy):
        queue.admit(2)
    queue.charge_bytes(100)
    with pytest.raises(errors.Busy):
        queue.charge_bytes(1)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="Debian's chromium and chromium-driver are not installed",
)
def test_page_in_headless_chromium(served, product_photos, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1000,800",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        raw, name = product_photos[0]
        image = tmp_path / "upload.jpg"
        image.write_bytes(raw)
        driver.get(served + "/")
        # Before any image: a line that says what to do (no black square), the model, and examples to click.
        empty = driver.find_element(By.ID, "empty")
        assert empty.is_displayed() and "No image yet" in empty.text
        assert not driver.find_element(By.ID, "preprocessed").is_displayed()
        WebDriverWait(driver, 30).until(lambda d: "seed-cnn" in d.find_element(By.ID, "about").text)
        WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#examples button")) == 10)
        examples = driver.find_elements(By.CSS_SELECTOR, "#examples button")
        assert [e.get_attribute("data-class") for e in examples] == list(fashion.CLASS_NAMES)
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "serve-page-empty.png"))
        examples[1].click()  # the test set's first trouser
        WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results li")) == 3)
        assert not empty.is_displayed() and driver.find_element(By.ID, "preprocessed").is_displayed()
        driver.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(driver, 30).until(  # the upload's results replace the example's
            lambda d: (
                d.find_elements(By.CSS_SELECTOR, "#results li")
                and d.find_elements(By.CSS_SELECTOR, "#results li")[0].get_attribute("data-class") == name
            )
        )
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results li"))
        shown = driver.find_elements(By.CSS_SELECTOR, "#results li")
        assert len(shown) == 3 and shown[0].get_attribute("data-class") == name
        assert driver.find_element(By.ID, "preprocessed").get_attribute("src").startswith("data:image/png")
        driver.save_screenshot(str(ARTIFACTS / "serve-page.png"))
    finally:
        driver.quit()


# ---------------------------------------------------------------------------------------------
# Hostile clients: the status is the error's type, requests and connections are bounded
def test_status_comes_from_the_error_type_not_its_words(served, product_photos):
    damaged = product_photos[0][0][:300]
    for name, raw, status in (
        ("pixels over the limit.png", damaged, 400),
        ("not an image format.png", damaged, 400),
        ("notes.png", b"plain text, not an image", 415),
        ("bomb.png", png_header_only(5000, 5000), 413),
    ):
        reply = httpx.post(f"{served}/predict", files={"file": (name, raw, "image/png")})
        assert reply.status_code == status, (name, reply.text)
    for content_type in ("IMAGE/JPEG", "Image/Jpeg; charset=binary", "application/OCTET-stream"):
        reply = httpx.post(f"{served}/predict", content=product_photos[0][0], headers={"Content-Type": content_type})
        assert reply.status_code == 200, content_type


def test_files_per_request_are_capped(served):
    small = png(PIL.Image.new("L", (28, 28), 30))
    allowed = httpx.post(
        f"{served}/predict",
        files=[("file", (f"{i}.png", small, "image/png")) for i in range(limits.MAX_FILES)],
        timeout=120,
    )
    assert allowed.status_code == 200 and len(allowed.json()["predictions"]) == limits.MAX_FILES
    refused = httpx.post(
        f"{served}/predict", files=[("file", (f"{i}.png", small, "image/png")) for i in range(limits.MAX_FILES + 1)]
    )
    assert refused.status_code == 400 and "Too many files" in refused.json()["detail"]


def test_no_external_pages_nosniff_and_host_checked(served):
    assert httpx.get(f"{served}/docs").status_code == 404 and httpx.get(f"{served}/redoc").status_code == 404
    assert httpx.get(f"{served}/openapi.json").status_code == 200
    for path in ("/", "/health", "/openapi.json"):
        assert httpx.get(served + path).headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{served}/health", headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding
    assert httpx.get(f"{served}/health", headers={"Host": "localhost:8000"}).status_code == 200
    assert transport.default_allowed_hosts("127.0.0.1") == transport.LOOPBACK_NAMES
    assert transport.default_allowed_hosts("0.0.0.0") is None


@pytest.mark.slow
def test_non_finite_weights_are_refused_at_start(tmp_path, capsys, trained_run):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    state = safetensors.torch.load_file(str(run_dir / runs.WEIGHTS))
    state["dense3.bias"][0] = float("nan")
    runs.save_weights(run_dir / runs.WEIGHTS, state, seedcnn.ARCHITECTURE)
    with pytest.raises(errors.RunError, match=r"dense3.bias holds NaN"):
        server.create_app(run_dir)
    code, _, err = run_cli(capsys, "serve", run_dir, "--port", free_port())  # an exception escaping fails the test
    assert code == 2 and "holds NaN" in err


def closed_by_server(sock: socket.socket) -> bool:
    """Wait (up to a minute, a state not a time) for the server to close the connection."""
    sock.settimeout(60)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_slow_and_idle_clients_are_dropped(impatient_server, server_log):
    address = ("127.0.0.1", int(impatient_server.rsplit(":", 1)[1]))
    half_headers = [socket.create_connection(address) for _ in range(20)]
    for sock in half_headers:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
    idle = socket.create_connection(address)
    trickle = socket.create_connection(address)
    trickle.sendall(
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n\x89PNG"
    )
    assert all(closed_by_server(sock) for sock in [*half_headers, idle, trickle])
    for sock in [*half_headers, idle, trickle]:
        sock.close()
    assert httpx.get(f"{impatient_server}/health").status_code == 200
    assert not [r for r in server_log if r.exc_info or r.levelno >= logging.ERROR]
    assert sum("no whole request within 1 s" in r.getMessage() for r in server_log) >= 22


def test_client_leaving_mid_body_is_one_log_line(impatient_server, server_log):
    sock = socket.create_connection(("127.0.0.1", int(impatient_server.rsplit(":", 1)[1])))
    sock.sendall(
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        b"Content-Length: 100000\r\n\r\n" + bytes(5000)
    )
    sock.close()
    deadline = time.time() + 60
    while not any("went away" in r.getMessage() for r in server_log) and time.time() < deadline:
        time.sleep(0.05)  # waiting for the server to notice: a state, bounded
    assert [r.getMessage() for r in server_log if "went away" in r.getMessage()]
    assert not [r for r in server_log if r.exc_info or r.levelno >= logging.ERROR]


def rss_kib(pid: int, field: str) -> int:
    line = next(row for row in Path(f"/proc/{pid}/status").read_text().splitlines() if row.startswith(field + ":"))
    return int(line.split()[1])


def limit_sized_images() -> list[tuple[str, bytes]]:
    """Small files that declare the most pixels the server accepts, in its costliest modes."""
    jpeg = io.BytesIO()
    PIL.Image.new("RGB", (8000, 6000), (200, 30, 30)).save(jpeg, "JPEG")
    side = int(photos.MAX_PIXELS**0.5)
    return [
        ("rgba.png", png(PIL.Image.new("RGBA", (side, side), (0, 0, 0, 0)))),
        ("palette.png", png(PIL.Image.new("P", (side, side)))),
        ("sixteen.png", png(PIL.Image.new("I;16", (side, side), 300))),
        ("line.png", png(PIL.Image.new("L", (photos.MAX_PIXELS, 1), 255))),
        ("photo.jpg", jpeg.getvalue()),
    ]


@pytest.mark.slow
def test_server_memory_is_bounded_for_limit_sized_images(tmp_path, trained_run, product_photos):
    """Peak RSS of a real `fmnist serve` process (Linux /proc: VmHWM, reset through clear_refs)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "fmnist", "serve", str(trained_run), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            try:
                if httpx.post(
                    f"{url}/predict", content=product_photos[0][0], headers={"Content-Type": "image/jpeg"}
                ).is_success:
                    break  # started, and the first prediction (its one-time costs) done
            except httpx.TransportError:
                time.sleep(0.2)
        files = [("file", (name, raw, "image/*")) for name, raw in limit_sized_images()]
        Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # peak RSS := current RSS
        start = rss_kib(process.pid, "VmRSS")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # four such requests at once
            replies = list(pool.map(lambda _: httpx.post(f"{url}/predict", files=files, timeout=300), range(4)))
        assert all(reply.status_code == 200 for reply in replies), [r.text for r in replies]
        grown_mb = (rss_kib(process.pid, "VmHWM") - start) / 1024
        print(f"peak RSS growth for 4 concurrent requests of {len(files)} limit-sized images: {grown_mb:.0f} MB")
        assert grown_mb < 300
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)


@pytest.mark.slow  # two fresh `fmnist serve` processes (their imports): ~6 s on 2 cores
def test_a_taken_port_is_one_line_before_the_model_loads(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for replicas in ([], ["--replicas", "2"]):  # one process; Ray Serve's proxy on a local Ray instance
            code, _, err = run_cli(capsys, "serve", tmp_path / "no-run", "--port", port, *replicas)
            # the address is refused first: no run directory (nor Ray) was needed to learn that
            assert code == 2 and err.startswith(f"error: cannot listen on 127.0.0.1:{port}: "), err
            assert "another --port" in err
    code, _, err = run_cli(capsys, "serve", tmp_path, "--port", "65536")
    assert code == 2 and "a port is a number from 0 to 65535, not '65536'" in err


def test_port_0_serves_on_the_free_port_it_prints(trained_run):
    process = subprocess.Popen(
        [sys.executable, "-m", "fmnist", "serve", str(trained_run), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = process.stdout.readline()  # "serving RUN in fp32 on http://127.0.0.1:PORT/ (Ctrl-C stops)"
        url = line.split(" on ", 1)[1].split()[0]
        assert not url.endswith(":0/"), line
        deadline = time.monotonic() + 120
        while True:  # the socket listens before the app starts: wait for the state, a health answer
            try:
                response = httpx.get(url + "health", timeout=30)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert response.status_code == 200 and response.json()["status"] == "ok"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)


@pytest.mark.slow
def test_replicas_without_ray_serve_say_how_to_get_it(trained_run, capsys, monkeypatch):
    code, _, err = run_cli(capsys, "serve", trained_run, "--replicas", 0)
    assert code == 2 and "--replicas must be 1 or more" in err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed: `import ray` fails
    code, _, err = run_cli(capsys, "serve", trained_run, "--replicas", 2)
    assert code == 2 and "pip install 'fmnist[ray]'" in err, err
