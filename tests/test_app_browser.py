"""`multidiff app` in a real headless browser: Debian's chromium driven by selenium through Debian's
chromium-driver (nothing is downloaded at run time; `bash .ci/setup.sh` installs all three). Upload a
digit, paint a stroke on the canvas with the mouse, pick "replace" and 3 steps, press Fill, read the
result back over HTTP: every pixel not painted is the input's. The page's screenshot goes to the test's temporary
folder; `MULTIDIFF_APP_SCREENSHOT=docs/app.png python -m pytest tests/test_app_browser.py` refreshes the README's."""
import io
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.ports import free_port
from helpers.tiny_runs import held_out_digit, tiny_image_run

ROOT = Path(__file__).parent.parent
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INSTALL = ("install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver) and selenium "
           "(pip install selenium); `bash .ci/setup.sh` installs all three")
# no network, no updates, no sync: the browser talks to the app on 127.0.0.1 and nothing else
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--no-first-run",
         "--window-size=1280,900"]


def browser():
    for path in (CHROMIUM, DRIVER):
        if not (os.access(path, os.X_OK) or shutil.which(Path(path).name)):
            pytest.fail(f"{path} is missing: {INSTALL}")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ModuleNotFoundError:
        pytest.fail(f"selenium is missing: {INSTALL}")
    opts = Options()
    opts.binary_location = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    for flag in FLAGS:
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER if os.access(DRIVER, os.X_OK) else shutil.which("chromedriver")),
                            options=opts)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`multidiff app RUN` on a free port of 127.0.0.1, uploads capped at 1 MB, its uploads in a test folder."""
    run = tiny_image_run(tmp_path_factory.getbasetemp())
    port = free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("uploads")), "OMP_NUM_THREADS": "1"}
    log = tmp_path_factory.mktemp("app_log") / "app.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "multidiff.cli", "app", str(run), "--port", str(port),
                                 "--max-upload-mb", "1", "--precision", "fp32"], stdout=f, stderr=subprocess.STDOUT,
                                env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"multidiff app did not start:\n{log.read_text()}")
                time.sleep(0.5)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_paint_a_mask_fill_it_and_keep_every_unpainted_pixel(server, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = server
    picture = tmp_path / "digit.png"
    digit = held_out_digit(picture, index=3)
    d = browser()
    try:
        d.get(url)
        wait = WebDriverWait(d, 60)
        upload = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#editor input[type=file]"))[0]
        upload.send_keys(str(picture))
        brush = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#editor button[aria-label=Brush]"))[0]
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#editor canvas"))
        time.sleep(1.0)  # the picture settles on the canvas
        brush.click()
        canvas = d.find_elements(By.CSS_SELECTOR, "#editor canvas")[-1]
        stroke = ActionChains(d).move_to_element_with_offset(canvas, -50, -10).click_and_hold()
        for dx in range(-50, 51, 10):  # a stroke across the middle of the picture (shown at the canvas' center)
            stroke.move_to_element_with_offset(canvas, dx, -10 + dx // 10)
        stroke.release().perform()
        method = d.find_element(By.CSS_SELECTOR, "#method input")
        method.click()
        method.send_keys(Keys.CONTROL, "a")
        method.send_keys("replace", Keys.ENTER)
        steps = d.find_element(By.CSS_SELECTOR, "#steps input[type=number]")
        steps.send_keys(Keys.CONTROL, "a")
        steps.send_keys("3", Keys.TAB)
        d.find_element(By.CSS_SELECTOR, "#run").click()
        result = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#result img"))[0].get_attribute("src")
        mask = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#mask img"))[0].get_attribute("src")
        link = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#download a"))[0].get_attribute("href")
        note = d.find_element(By.CSS_SELECTOR, "#note").text
        time.sleep(0.5)
        d.save_screenshot(os.environ.get("MULTIDIFF_APP_SCREENSHOT") or str(tmp_path / "app.png"))
    finally:
        d.quit()

    def fetch(src):
        assert src.startswith(url), src  # served by the app itself
        return np.asarray(Image.open(io.BytesIO(urllib.request.urlopen(src, timeout=10).read())).convert("RGB"))

    out, filled = fetch(result), fetch(mask)[..., 0] > 127
    assert out.shape == digit.shape == (16, 16, 3)
    assert 4 <= filled.sum() <= 160, filled.sum()  # the stroke, at the model's 16x16
    assert np.array_equal(out[~filled], digit[~filled])  # every pixel not painted is the input's
    assert (out[filled] != digit[filled]).any()
    assert np.array_equal(fetch(link), out)  # the download is the result
    assert f"replace: {int(filled.sum())} of 256 pixels filled" in note


def test_the_server_serves_no_file_outside_its_own_and_caps_uploads(server):
    url, proc = server
    for path in ("/etc/passwd", str(ROOT / "pyproject.toml")):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10)
        assert e.value.code in (403, 404), e.value.code
    boundary = "multidiffboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + b"\0" * (2 * 2 ** 20) + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url}gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=30)
    assert e.value.code == 413, e.value.code  # 2 MB against --max-upload-mb 1
    assert proc.poll() is None
