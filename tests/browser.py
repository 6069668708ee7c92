"""Headless Chromium over the DevTools protocol: log in to Label Studio, open a page,
read its text and take a screenshot. Used to check that templates render in the real UI.
"""

from __future__ import annotations

import base64
import http.cookiejar
import itertools
import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path


def chromium_executable() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("chromium not found: ./scripts/setup installs Debian's chromium package")


def login_cookies(base_url: str, email: str, password: str) -> list[dict]:
    """Log in through Label Studio's own form; return the session cookies."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base_url}/user/login/").read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": token, "email": email, "password": password}).encode()
    request = urllib.request.Request(f"{base_url}/user/login/", data=form, headers={"Referer": f"{base_url}/user/login/"})
    opener.open(request).read()
    cookies = [{"name": c.name, "value": c.value, "domain": "127.0.0.1", "path": "/"} for c in jar]
    assert any(c["name"] == "sessionid" for c in cookies), "login to Label Studio failed"
    return cookies


class Chromium:
    """One headless Chromium with a fresh profile, driven over CDP."""

    def __init__(self):
        import websocket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        self.proc = subprocess.Popen(
            [chromium_executable(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={self.profile}", f"--remote-debugging-port={port}", "--window-size=1280,900",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json").read())
                page = next(t for t in targets if t["type"] == "page")
                break
            except (OSError, StopIteration):
                if time.monotonic() > deadline:
                    raise AssertionError("chromium did not open its DevTools port")
                time.sleep(0.3)
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.ids = itertools.count(1)

    def call(self, method: str, **params):
        message_id = next(self.ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def text(self) -> str:
        return self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                         returnByValue=True)["result"].get("value", "")

    def open(self, url: str, cookies: list[dict], wait_for: list[str], timeout: float = 90) -> str:
        """Navigate with the cookies set; wait until every string in ``wait_for`` is on the page."""
        self.call("Network.enable")
        for cookie in cookies:
            self.call("Network.setCookie", **cookie)
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            text = self.text()
            # The labeling app re-renders while it loads: require two matching polls in a row.
            seen = seen + 1 if all(s in text for s in wait_for) else 0
            if seen >= 3:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"page never showed {wait_for}; it shows: {text[:500]!r}")
            time.sleep(0.5)

    def screenshot(self, path: Path, must_show: list[str] = ()) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        text = self.text()
        missing = [s for s in must_show if s not in text]
        assert not missing, f"page changed while taking the screenshot; now missing {missing}"
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            shutil.rmtree(self.profile, ignore_errors=True)
