"""Just enough of the W3C WebDriver protocol to drive Debian's headless Chromium through
`chromedriver`, with the standard library only (no Selenium or Playwright to install).

    with Chromium.start(profile_dir) as browser:
        browser.get(url)
        browser.click('#grid .card[data-item-id="item-7"]')
        browser.wait_for("return document.title", what="a title")

Chromium runs as root here, on a machine whose only network is loopback: the flags turn off the
sandbox and everything that would phone home (see the env notes on browsers).
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1400",
]


def chromium_missing() -> str | None:
    """Why a browser test cannot run here, or None."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).exists()]
    if missing:
        return (
            f"headless Chromium is not installed ({', '.join(missing)} missing): "
            "apt-get install chromium chromium-driver"
        )
    return None


class WebDriverError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(method: str, url: str, body: dict | None = None, timeout: float = 60) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())["value"]
    except urllib.error.HTTPError as exc:
        value = json.loads(exc.read() or b"{}").get("value", {})
        raise WebDriverError(f"{value.get('error')}: {value.get('message', '')[:500]}") from exc


class Chromium:
    def __init__(self, driver: subprocess.Popen, base: str, session: str) -> None:
        self.driver, self.base, self.session = driver, base, session

    @classmethod
    def start(cls, profile_dir: Path, startup_seconds: float = 30) -> Chromium:
        port = _free_port()
        driver = subprocess.Popen(
            [CHROMEDRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + startup_seconds
        while True:
            try:
                if _request("GET", f"{base}/status", timeout=2).get("ready"):
                    break
            except (OSError, WebDriverError):
                pass
            if driver.poll() is not None or time.monotonic() > deadline:
                driver.kill()
                raise WebDriverError(f"chromedriver did not start within {startup_seconds} s")
            time.sleep(0.05)
        options = {"binary": CHROMIUM, "args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}"]}
        try:
            session = _request(
                "POST",
                f"{base}/session",
                {"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}},
            )
        except Exception:
            driver.kill()
            driver.wait()
            raise
        return cls(driver, base, session["sessionId"])

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.quit()

    def quit(self) -> None:
        try:
            _request("DELETE", f"{self.base}/session/{self.session}", timeout=10)
        except (OSError, WebDriverError):
            pass
        finally:
            self.driver.terminate()
            try:
                self.driver.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.driver.kill()
                self.driver.wait()

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        return _request(method, f"{self.base}/session/{self.session}{path}", body)

    def get(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def execute(self, script: str, *args: Any) -> Any:
        """Run `script` (a function body: use `return`) in the page; `arguments[i]` are args."""
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def _element(self, css: str) -> str:
        found = self._call("POST", "/element", {"using": "css selector", "value": css})
        # an element reference is a one-key object (the key is WebDriver's element identifier)
        (reference,) = found.values()
        return reference

    def click(self, css: str) -> None:
        self._call("POST", f"/element/{self._element(css)}/click", {})

    def text(self, css: str) -> str:
        return self._call("GET", f"/element/{self._element(css)}/text")

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self._call("GET", "/screenshot")))

    def wait_for(self, script: str, *args: Any, what: str, seconds: float = 30) -> Any:
        """Poll `script` until it returns something truthy; fail naming `what` after `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            value = self.execute(script, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {seconds:.0f} s for {what}")
            time.sleep(0.05)
