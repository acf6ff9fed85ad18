"""A screenshot of an evaluation's report.html, taken in headless chromium (the README's
docs/report.png):

    promptkit eval sentiment --data reviews.jsonl --shots 0,4 --out report/
    python bench/report_screenshot.py report/report.html --out docs/report.png

Opens the page from disk and, to show the detail view, the first item where the variants
differ (else the first item). Needs selenium and Debian's ``chromium`` and ``chromium-driver``
(the same browser the report.html test drives).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By


def screenshot(page: Path, out: Path, width: int, height: int) -> None:
    """Save a PNG of ``page`` with one item's detail open. Raises SystemExit without chromium."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        sys.exit("needs chromium and chromium-driver: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver_path))
    try:
        driver.get(page.resolve().as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "#item-table tr.differs") or (
            driver.find_elements(By.CSS_SELECTOR, "#item-table tr.item")
        )
        rows[0].find_elements(By.CSS_SELECTOR, "button.open")[-1].click()
        driver.execute_script("window.scrollTo(0, 0)")
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path, help="an eval's report.html")
    parser.add_argument("--out", type=Path, default=Path("docs/report.png"))
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1050)
    args = parser.parse_args()
    screenshot(args.page, args.out, args.width, args.height)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
