"""Helpers of the ``almat serve`` tests: the benchmark's store filler and server, screenshots."""

from __future__ import annotations

from pathlib import Path
from project_module import load_module

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000"]


def load_bench():
    """``benchmarks/serve_load.py`` as a module (fill_store, start_server, free_port)."""
    return load_module("benchmarks/serve_load.py")


def screenshot(driver, name: str) -> Path:
    """A full-page PNG under tests/serve/artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(height + 40, 800), 8000))
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    return path
