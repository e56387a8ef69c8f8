"""Render an HTML file in headless Chromium and report broken images and script errors.

A copy of the page gets a first script that records ``window.onerror``,
``console.error`` and unhandled rejections, and, once the page has loaded,
writes the outcome into the DOM, which ``chromium --dump-dom`` prints.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")

_PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener("unhandledrejection", e => window.__errors.push(String(e.reason)));
const __consoleError = console.error;
console.error = (...args) => { window.__errors.push(args.join(" ")); __consoleError(...args); };
window.addEventListener("load", () => {
  const images = Array.from(document.images).map(i => ({
    src: i.src.slice(0, 40), complete: i.complete, width: i.naturalWidth }));
  const out = document.createElement("pre");
  out.id = "__probe";
  out.textContent = JSON.stringify({images: images, errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""


def browser() -> str | None:
    """Path of a Chromium-like browser, or ``None``."""
    return next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)


def render(page: Path, workdir: Path) -> dict:
    """``{"images": [{src, complete, width}], "errors": [...]}`` of ``page`` in the browser."""
    text = page.read_text()
    probed = re.sub(r"(<head[^>]*>)", r"\1" + _PROBE, text, count=1, flags=re.IGNORECASE)
    copy = workdir / f"probed-{page.name}"
    copy.write_text(probed)
    command = [
        browser(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--allow-file-access-from-files",
        f"--user-data-dir={workdir / 'profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        copy.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    match = re.search(r'<pre id="__probe">(.*?)</pre>', done.stdout, flags=re.DOTALL)
    if match is None:
        raise AssertionError(f"the browser printed no probe result; stderr: {done.stderr[-2000:]}")
    import html

    return json.loads(html.unescape(match.group(1)))
