"""The status page opens in headless Chromium (Debian's chromium + chromium-driver, installed
by scripts/setup.sh) and draws its three charts from live data."""

from __future__ import annotations

import shutil
import tempfile
import time

import httpx  # noqa: E402  (hard dependencies: a missing one fails, never skips)
import pytest
from selenium import webdriver  # noqa: E402

from gearshift.serve.app import GearServer, ServeConfig, create_app  # noqa: E402
from gearshift.serve.gears import GearSet  # noqa: E402
from gearshift.serve.table import read_gear_table  # noqa: E402
from gearshift.serve.testing import ThreadServer, make_tiny_gears  # noqa: E402

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.fail(
            "headless Chromium is missing: run scripts/setup.sh (apt-get install chromium "
            "chromium-driver)"
        )
    return browser, driver


# drawn pixels: any canvas pixel that is neither white nor transparent
COUNT_INK = """
const c = document.getElementById(arguments[0]);
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let ink = 0;
for (let i = 0; i < d.length; i += 4) {
  if (d[i+3] > 0 && (d[i] < 200 || d[i+1] < 200 || d[i+2] < 200)) ink++;
}
return ink;
"""


def test_status_page_shows_live_charts(tmp_path):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = chromium_paths()
    gearset = GearSet(read_gear_table(make_tiny_gears(tmp_path)))
    server = GearServer(gearset, ServeConfig(slo_ms=100))
    http = ThreadServer(create_app(server))
    profile = tempfile.mkdtemp(prefix="gearshift-chromium-")
    options = Options()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = None
    try:
        with httpx.Client(base_url=http.url, timeout=30) as c:
            for i in range(3):  # traffic in two different seconds, so every chart has a line
                assert c.post("/v1/predict", json={"texts": [f"good film {i}"]}).status_code == 200
                assert (
                    c.post("/v1/predict", json={"texts": ["bad"], "gear": "k2"}).status_code == 200
                )
                time.sleep(0.6)
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        driver.set_page_load_timeout(30)
        driver.get(http.url + "/")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if int(driver.find_element("tag name", "body").get_attribute("data-updates") or 0) >= 2:
                break
            time.sleep(0.2)
        assert int(driver.find_element("tag name", "body").get_attribute("data-updates")) >= 2
        summary = driver.find_element("id", "summary").text
        assert "gear in use: full" in summary and "SLO: 100" in summary, summary
        for chart in ("rate", "p99", "gear"):
            canvas = driver.find_element("id", chart)
            assert int(canvas.get_attribute("data-points")) >= 2, chart
            assert driver.execute_script(COUNT_INK, chart) > 100, chart
        driver.save_screenshot(str(tmp_path / "status.png"))
    finally:
        if driver is not None:
            driver.quit()
        http.stop()
        server.close()
        shutil.rmtree(profile, ignore_errors=True)
