"""serve.py's page, used as a person uses it: headless Chromium (Debian's chromium and its
chromedriver, which .ci/run installs) picks images, reads the label and probabilities shown and
compares them with predict.py's, toggles Grad-CAM, sorts the table and downloads the CSV. The
browser can reach 127.0.0.1 only: a page that needed anything from the internet would break.

SKIN_KERAS_SCREENSHOT=docs/serve_page.png writes the README's screenshot (of the synthetic
images: the HAM images are CC BY-NC and stay out of the repository).
"""

import csv
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skin_keras.infer import load
from skin_keras.infer.predict import PredictConfig, predict_to_folder
from skin_keras.serve import app, server

from conftest import HAM_200PX, untrained_run_folder
from serving import running

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"no {CHROMIUM} and {CHROMEDRIVER}: install Debian's chromium and "
                    "chromium-driver (.ci/run does)")
    from selenium import webdriver  # pylint: disable=g-import-not-at-top
    from selenium.webdriver.chrome.service import Service  # pylint: disable=g-import-not-at-top

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                     f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
                     # Every host name but the server's fails to resolve: no internet.
                     "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                              options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                           {"behavior": "allow", "downloadPath": str(downloads)})
    yield driver, downloads
    driver.quit()


def wait_for(condition, what: str, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"the page did not show {what} within {seconds} s")


def upload(driver, paths: list[Path]) -> list:
    """Picks `paths` in the file chooser; returns their cards once all are answered."""
    from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top

    before = len(driver.find_elements(By.CSS_SELECTOR, ".card"))
    driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))

    def answered():
        cards = driver.find_elements(By.CSS_SELECTOR, ".card")[before:]
        return cards if len(cards) == len(paths) and all(
            card.get_attribute("data-state") == "done" for card in cards) else None

    return wait_for(answered, f"answers for {len(paths)} images")


def image_set(tmp_path: Path, tiny_dataset: Path) -> Path:
    """Real HAM images where ../shared/datasets has them (else the synthetic ones), and a file
    that is not an image."""
    folder = tmp_path / "upload"
    folder.mkdir()
    real = sorted((HAM_200PX / "ISIC_2019_Training_Input").glob("*.jpg"))[:5]
    for path in real or sorted((tiny_dataset / "val").rglob("*.jpg"))[:5]:
        shutil.copy(path, folder / path.name)
    (folder / "notes.jpg").write_text("not an image")
    return folder


def test_page_shows_what_predict_py_says_explains_and_downloads_the_csv(
        browser, calibrated_run, tiny_dataset, tmp_path):
    from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top

    driver, downloads = browser
    config = server.ServeConfig(model_path=str(calibrated_run), backend="keras", port=0,
                                max_upload_mb=1)
    with running(config) as (base, info):
        driver.get(base + "/")
        facts = wait_for(lambda: "classes" in driver.find_element(By.ID, "model-facts").text
                         and driver.find_element(By.ID, "model-facts").text, "the model")
        assert f"input {info['img_size']} × {info['img_size']} px" in facts
        assert "calibrated (temperature" in facts
        rule = load.load(calibrated_run).unknown  # Reliability 2026-12-07, item 10: in words.
        assert (f"an image is unknown when it is less typical of the training images than "
                f"{rule.coverage:.0%} of the validation images (it flags "
                f"{1 - rule.coverage:.0%} of them)") in facts

        # --- Synthetic images and a bad file: Grad-CAM, the bad file's card, a screenshot ---
        synthetic = sorted((tiny_dataset / "val").rglob("*.jpg"))[:3]
        bad = tmp_path / "broken.jpg"
        bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
        big = tmp_path / "big.png"  # 1.9 MB of noise, over the server's 1 MB.
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (800, 800, 3), np.uint8)
                        ).save(big)
        cards = upload(driver, [*synthetic, bad, big])
        for card, message in ((cards[-2], "broken.jpg: not a readable image"),
                              (cards[-1], "larger than the server's limit of 1 MB")):
            assert "failed" in card.get_attribute("class")
            assert message in card.find_element(By.CSS_SELECTOR, ".error").text
        picture = cards[0].find_element(By.CSS_SELECTOR, ".picture img")
        original = picture.get_attribute("src")
        cards[0].find_element(By.CSS_SELECTOR, ".gradcam").click()
        wait_for(lambda: cards[0].get_attribute("data-gradcam") == "shown" and driver
                 .execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                 picture), "the Grad-CAM overlay")
        assert picture.get_attribute("src") not in (original, None)
        cards[0].find_element(By.CSS_SELECTOR, ".gradcam").click()
        assert picture.get_attribute("src") == original
        if os.environ.get("SKIN_KERAS_SCREENSHOT"):
            cards[0].find_element(By.CSS_SELECTOR, ".gradcam").click()
            time.sleep(0.5)
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1280, height + 120)
            driver.save_screenshot(os.environ["SKIN_KERAS_SCREENSHOT"])
            driver.set_window_size(1280, 1000)
        driver.find_element(By.ID, "clear").click()

        # Reliability 2026-12-07 C2: a JPEG with EXIF orientation 6 is shown as stored, as the
        # model sees it, so that the Grad-CAM overlay lines up with it.
        turned = tmp_path / "exif6.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 120, 3), np.uint8)
                        ).save(turned, exif=exif)
        card = upload(driver, [turned])[0]
        shown = card.find_element(By.CSS_SELECTOR, ".picture img")
        assert driver.execute_script(
            "return getComputedStyle(arguments[0]).imageOrientation", shown) == "none"
        card.find_element(By.CSS_SELECTOR, ".gradcam").click()
        wait_for(lambda: card.get_attribute("data-gradcam") == "shown" and driver
                 .execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                 shown), "the Grad-CAM overlay of the turned JPEG")
        width, height = driver.execute_script(
            "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", shown)
        assert width > height  # The overlay is of the stored 120 x 60 picture.
        driver.find_element(By.ID, "clear").click()

        # --- Real images: the label and probabilities predict.py gives, and its CSV ---
        folder = image_set(tmp_path, tiny_dataset)
        paths = sorted(folder.iterdir())
        cards = upload(driver, paths)
        rows = {Path(row["path"]).name: row for row in json.loads(predict_to_folder(
            PredictConfig(model_path=str(calibrated_run), backend="keras",
                          source=(str(folder),), output=str(tmp_path / "out"))).read_text())}
        for card in cards:
            row = rows[card.get_attribute("data-name")]
            if row["error"]:
                assert "not a readable image" in card.find_element(By.CSS_SELECTOR,
                                                                   ".error").text
                continue
            assert card.get_attribute("data-label") == row["label"]
            assert abs(float(card.get_attribute("data-score")) - row["score"]) < 1e-5
            assert card.get_attribute("data-unknown") == str(row["unknown"]).lower()
            share = round(100 * float(rule.typicality([row["unknown_score"]])[0]))
            assert (f"more typical of the training images than {share}% of the validation "
                    "images") in card.text
            bars = card.find_elements(By.CSS_SELECTOR, ".bar")
            assert bars[0].get_attribute("data-class") == row["label"]
            for bar in bars:
                assert abs(float(bar.get_attribute("data-probability"))
                           - row["probabilities"][bar.get_attribute("data-class")]) < 1e-5

        # --- The table sorts; the CSV has predictions.csv's columns and values ---
        driver.find_element(By.CSS_SELECTOR, "th[data-column='2']").click()  # score
        scores = [cell.text for cell in driver.find_elements(
            By.CSS_SELECTOR, "#table tbody tr td:nth-child(3)")]
        assert scores[:-1] == sorted(scores[:-1]) and scores[-1] == ""  # Failed rows last.
        driver.find_element(By.ID, "download").click()
        downloaded = wait_for(lambda: (downloads / "predictions.csv").exists() and
                              downloads / "predictions.csv", "the CSV download")
        with open(downloaded, newline="") as file:
            page_csv = list(csv.reader(file))
        with open(tmp_path / "out" / "predictions.csv", newline="") as file:
            expected = list(csv.reader(file))
        assert page_csv[0] == expected[0]
        by_name = {Path(row[0]).name: row for row in expected[1:]}
        assert sorted(row[0] for row in page_csv[1:]) == sorted(by_name)
        for row in page_csv[1:]:
            for ours, theirs in zip(row[1:-1], by_name[row[0]][1:-1]):
                assert ours == theirs or math.isclose(float(ours), float(theirs), rel_tol=1e-5,
                                                     abs_tol=1e-5)
            assert bool(row[-1]) == bool(by_name[row[0]][-1])

        # --- Nothing came from anywhere but the server ---
        resources = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)")
        assert resources and all(name.startswith((base, "blob:" + base)) for name in resources)
    for page_file in app.STATIC.iterdir():
        assert "http://" not in page_file.read_text() and "https://" not in (
            page_file.read_text())


def test_a_metadata_model_takes_age_sex_and_site_per_image(browser, metadata_data,
                                                           tmp_path_factory):
    from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
    from selenium.webdriver.support.ui import Select  # pylint: disable=g-import-not-at-top

    run = untrained_run_folder(tmp_path_factory.mktemp("metadata_run"), metadata_data,
                               metadata=str(metadata_data / "train_metadata.csv"))
    driver, _ = browser
    with running(server.ServeConfig(model_path=str(run), backend="keras", port=0)) as (base, _):
        driver.get(base + "/")
        wait_for(lambda: "patient metadata" in driver.find_element(By.ID, "model-facts").text,
                 "the model")
        [card] = upload(driver, sorted((metadata_data / "val").rglob("*.jpg"))[:1])
        assert "metadata missing" in card.find_element(By.CSS_SELECTOR, ".flags").text
        before = card.get_attribute("data-score")
        card.find_element(By.CSS_SELECTOR, "[data-field='age_approx']").send_keys("45")
        sex = Select(card.find_element(By.CSS_SELECTOR, "[data-field='sex']"))
        assert [o.text for o in sex.options] == ["unknown", "female", "male"]
        sex.select_by_visible_text("male")
        Select(card.find_element(By.CSS_SELECTOR, "[data-field='anatom_site_general']")
               ).select_by_visible_text("site 1")
        card.find_element(By.CSS_SELECTOR, ".predict-again").click()
        wait_for(lambda: "metadata used" in card.find_element(By.CSS_SELECTOR, ".flags").text,
                 "the prediction with metadata")
        assert card.get_attribute("data-score") != before
