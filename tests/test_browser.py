"""The report in a real browser: headless Chromium loads every image the page references (the page's inline
script counts them into <body data-images-loaded/-total>) and paints a non-blank page.

Skips when no Chromium binary is on PATH, unless MEMINF_REQUIRE_BROWSER=1 (as in .ci/run, which installs
Debian's chromium first): then a missing browser fails the test."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.report import main
from tests.test_report import PageParser, npz_cfg, parse, write_sweep

BROWSERS = ("chromium", "chromium-headless-shell", "google-chrome", "chromium-browser")
REQUIRE_ENV = "MEMINF_REQUIRE_BROWSER"
TIMEOUT_S = 120  # one page load takes about 1-3 s on a 2-core machine
WINDOW = (1200, 2000)  # width, height of the screenshot
MIN_COLOURS = 16  # a painted page (text, charts, images) has many; a blank or failed one has one or two


def browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path is not None:
            return path
    reason = f"no Chromium binary ({', '.join(BROWSERS)}) on PATH; install Debian's chromium package"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1 requires it)")
    pytest.skip(reason)


def chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def render(binary: str, page: Path, profile: Path, screenshot: Path) -> tuple[int, int]:
    """Load the page once: write its screenshot and return (images loaded, images on the page) as the page's
    script counted them after the load event."""
    dom = chromium(binary, profile, "--virtual-time-budget=10000", f"--screenshot={screenshot}",
                   f"--window-size={WINDOW[0]},{WINDOW[1]}", "--dump-dom", page.as_uri()).stdout
    parser = PageParser()
    parser.feed(dom)
    body = parser.page.body
    assert "data-images-loaded" in body, f"the load script did not run: {dom[:500]}"
    return int(body["data-images-loaded"]), int(body["data-images-total"])


def test_chromium_loads_every_image_and_paints_the_page(tmp_path: Path) -> None:
    binary = browser()
    write_sweep(tmp_path / "sweep", npz_cfg(tmp_path, 32, 40, 8, True), tmp_path / "data")
    report = tmp_path / "report"
    assert main([str(tmp_path / "sweep"), "--out", str(report), "--gallery", "8", "--pairs", "3"]) == 0
    on_page = len(parse(report / "index.html").images)
    assert on_page > 10
    shot = tmp_path / "shot.png"
    assert render(binary, report / "index.html", tmp_path / "profile", shot) == (on_page, on_page)
    with Image.open(shot) as opened:
        pixels = np.asarray(opened.convert("RGB"))
    assert pixels.shape == (WINDOW[1], WINDOW[0], 3)
    colours = (pixels[..., 0].astype(np.uint32) << 16) | (pixels[..., 1].astype(np.uint32) << 8) | pixels[..., 2]
    assert np.unique(colours).size >= MIN_COLOURS
    assert np.mean(np.any(pixels < 200, axis=2)) > 0.02  # text, charts and images cover part of the white page

    broken = tmp_path / "broken"
    shutil.copytree(report, broken)
    next((broken / "img").iterdir()).unlink()
    assert render(binary, broken / "index.html", tmp_path / "profile", tmp_path / "broken.png") == (on_page - 1,
                                                                                                   on_page)
