"""The page at `GET /` in headless Chromium (Debian `chromium` + `chromium-driver`, Selenium).

Uploads raw sample images through the real file input, reads the predicted classes and the
Grad-CAM overlays from the page, checks them against the API, downloads the CSV, tabs through
the controls, checks the phone-width layout, and screenshots the page.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from browser import chromium, distinct_colours
from serve_helpers import pbc_files, pbc_head_checkpoint, post_files, server

DRIVER = "/usr/bin/chromedriver"
#: Set to a PNG path to keep the desktop screenshot (how docs/images/serve.png is made).
SCREENSHOT_ENV = "BLOODMNIST_SERVE_SCREENSHOT"


@pytest.fixture(scope="module")
def ckpt(shared_data: Path, tmp_path_factory) -> Path:
    return pbc_head_checkpoint(shared_data, tmp_path_factory)


def start_browser(profile: Path, downloads: Path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    browser = chromium()
    driver_path = DRIVER if Path(DRIVER).is_file() else shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.skip(
            "chromium/chromium-driver not installed (apt-get install chromium chromium-driver)"
        )
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1100,900",
    ):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    try:
        driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(driver_path))
    except Exception as exc:  # noqa: BLE001 - any start failure means: no browser here
        pytest.skip(f"headless chromium could not start: {str(exc).splitlines()[0][:200]}")
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    return driver


def wait_for(predicate, timeout: float = 90, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_page_classifies_uploads_like_the_api(ckpt: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    files = pbc_files()[::16]  # 8 images, one or more per class folder
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with server(ckpt, "--device", "cpu", "--precision", "fp32", log=tmp_path / "s.log") as url:
        api = post_files(url, files)["results"]
        driver = start_browser(tmp_path / "profile", downloads)
        try:
            driver.get(url + "/")
            info = driver.find_element(By.ID, "model-info")
            wait_for(lambda: info.text.startswith("Model best.pt"), what="model info")
            driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in files))
            status = driver.find_element(By.ID, "status")
            wait_for(lambda: status.text.startswith("Done"), what="results")
            assert status.text == f"Done: {len(files)} of {len(files)} images classified."
            preds = [
                e.get_attribute("data-pred") for e in driver.find_elements(By.CSS_SELECTOR, ".pred")
            ]
            assert preds == [row["pred"] for row in api]
            titles = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".card h2")]
            assert titles == [p.name for p in files]
            overlays = driver.find_elements(By.CSS_SELECTOR, "img[alt^='Grad-CAM overlay']")
            assert len(overlays) == len(files)
            assert all(
                driver.execute_script("return arguments[0].naturalWidth", img) == 224
                for img in overlays
            )
            bars = driver.find_elements(By.CSS_SELECTOR, ".card:first-child .bars li")
            assert len(bars) == 8 and bars[0].text.startswith(api[0]["pred"].replace("_", " "))
            shot = tmp_path / "serve.png"
            driver.save_screenshot(str(shot))
            # Keyboard: the drop zone, the file chooser and the options are reached with Tab.
            driver.execute_script("document.getElementById('drop').focus()")
            reached = [driver.switch_to.active_element.get_attribute("id")]
            for _ in range(4):
                ActionChains(driver).send_keys(Keys.TAB).perform()  # not into the file input
                reached.append(driver.switch_to.active_element.get_attribute("id"))
            assert reached == ["drop", "files", "gradcam", "tta", "csv"], reached
            driver.find_element(By.ID, "csv").click()
            csv_path = wait_for(
                lambda: next(iter(downloads.glob("*.csv")), None), 30, "the CSV download"
            )
            with csv_path.open() as fh:
                rows = list(csv.DictReader(fh))
            assert [r["pred"] for r in rows] == preds and [r["file"] for r in rows] == titles
            # Phone-sized screen: one column, nothing wider than the viewport.
            driver.set_window_size(390, 844)
            width = driver.execute_script("return document.documentElement.scrollWidth")
            assert width <= driver.execute_script("return window.innerWidth"), width
        finally:
            driver.quit()
    with Image.open(shot) as img:
        colours, top = distinct_colours(img)
    assert colours > 200 and top < 0.9
    keep = os.environ.get(SCREENSHOT_ENV)
    if keep:
        shutil.copyfile(shot, keep)
