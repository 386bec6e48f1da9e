"""The upload page in a real headless Chromium against a real server: choose a file, see the labels."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_serve import CLASSES, make_run, running_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).parent / "artifacts"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip("chromium and chromedriver are not installed (Debian packages chromium, chromium-driver)",
                allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def sample_image(path: Path) -> Path:
    """A 160 px grey picture with stripes and a disc: something a person can recognise in the screenshot."""
    y, x = np.mgrid[0:160, 0:160]
    img = np.where((y // 12) % 2 == 0, 70, 190).astype(np.uint8)
    img[np.hypot(y - 80, x - 80) < 40] = 245
    Image.fromarray(img).save(path)
    return path


@contextlib.contextmanager
def page_with_upload(browser, tmp_path: Path):
    """The served page of a fresh run with the stripes picture chosen in its file field; yields a 60 s wait."""
    run = make_run(tmp_path / "run")
    picture = sample_image(tmp_path / "stripes.png")
    with running_server(run, tmp_path / "log.sqlite", tmp_path / "server.out") as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: d.find_element(By.ID, "model-name").text == "seed-mnist-cnn")
        browser.find_element(By.ID, "file").send_keys(str(picture))
        yield wait


def test_upload_shows_labels(browser, tmp_path):
    with page_with_upload(browser, tmp_path) as wait:
        label = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#bars .row .label")))
        assert label.text in CLASSES
        rows = browser.find_elements(By.CSS_SELECTOR, "#bars .row")
        assert len(rows) == len(CLASSES)
        assert browser.find_element(By.ID, "error").is_displayed() is False
        wait.until(lambda d: d.execute_script("return document.getElementById('preview').naturalWidth") > 0)
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "serve_page.png"))

        text = tmp_path / "notes.txt"
        text.write_text("not an image")
        browser.find_element(By.ID, "file").send_keys(str(text))
        error = wait.until(ec.visibility_of_element_located((By.ID, "error")))
        assert "not an image" in error.text
        browser.save_screenshot(str(ARTIFACTS / "serve_page_error.png"))


def test_upload_shows_the_heat_map_next_to_the_answer(browser, tmp_path):
    with page_with_upload(browser, tmp_path) as wait:
        caption = wait.until(ec.visibility_of_element_located((By.ID, "explain-text")))
        assert caption.text.startswith("Grad-CAM: where the model looked")
        wait.until(lambda d: d.execute_script("return document.getElementById('explain-img').naturalWidth") > 0)
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "serve_page_explain.png"))
