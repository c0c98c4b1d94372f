"""Check that a built docs site renders its formulas with no network, in headless Chromium.

    python .ci/check_math.py SITE_DIR [--screenshot PNG]

Serves SITE_DIR on 127.0.0.1, loads every page holding ``pymdownx.arithmatex`` markup in
headless Chromium (background networking off: only the local server answers), and reads
the DOM after the scripts ran. Fails unless every formula became a MathJax
``mjx-container``, none is a MathJax error, and no raw TeX (``$$``, ``\\(``, ``\\[``) is
left in the page text outside code. ``--screenshot`` also saves the most formula-heavy
page as a PNG, to look at.
"""

from __future__ import annotations

import argparse
import functools
import html.parser
import http.server
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=30000",
]
RAW = ("$$", "\\(", "\\[")


def chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class Page(html.parser.HTMLParser):
    """Counts formulas, typeset formulas, MathJax errors and raw TeX left in the text."""

    SKIP = frozenset({"code", "pre", "script", "style", "mjx-container"})

    def __init__(self):
        super().__init__()
        self.stack: list[tuple[str, bool]] = []  # (tag, is an arithmatex element)
        self.formulas = self.typeset = 0
        self.errors: list[tuple[int, str]] = []  # (formula index, MathJax's message)
        self.tex: list[str] = []  # each formula's text (its TeX, before MathJax ran)
        self.raw: list[str] = []
        self._typeset_in_current = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        is_math = "arithmatex" in (attrs.get("class") or "").split()
        if is_math:
            self.formulas += 1
            self._typeset_in_current = False
            self.tex.append("")
        if tag == "mjx-container" and any(m for _, m in self.stack):
            if not self._typeset_in_current:
                self.typeset += 1
            self._typeset_in_current = True
        if tag == "mjx-merror":
            self.errors.append((self.formulas - 1, attrs.get("data-mjx-error", "")))
        self.stack.append((tag, is_math))

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        if any(m for _, m in self.stack):
            self.tex[-1] += data
        if any(tag in self.SKIP for tag, _ in self.stack):
            return
        for raw in RAW:
            if raw in data:
                self.raw.append(data.strip()[:80])


def serve(root: pathlib.Path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run_chromium(binary: str, url: str, *extra: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [binary, *FLAGS, f"--user-data-dir={profile}", *extra, url],
            capture_output=True,
            text=True,
            timeout=180,
        )
    if result.returncode != 0:
        raise RuntimeError(f"chromium failed on {url}: {result.stderr[-2000:]}")
    return result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=pathlib.Path)
    parser.add_argument("--screenshot", type=pathlib.Path)
    args = parser.parse_args()
    binary = chromium()
    if binary is None:
        print("check_math: no chromium found (apt-get install chromium)", file=sys.stderr)
        return 2
    pages = {
        p: p.read_text().count('class="arithmatex"')
        for p in sorted(args.site.rglob("*.html"))
        if 'class="arithmatex"' in p.read_text()
    }
    if not pages:
        print("check_math: no page has formulas: is pymdownx.arithmatex on?", file=sys.stderr)
        return 1
    server = serve(args.site)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    failures, total = [], 0
    try:
        for path in pages:
            url = f"{base}/{path.relative_to(args.site).as_posix()}"
            source = Page()
            source.feed(path.read_text())
            page = Page()
            page.feed(run_chromium(binary, url, "--dump-dom"))
            total += page.typeset
            where = path.relative_to(args.site).as_posix()
            if page.typeset != page.formulas:
                failures.append(f"{where}: {page.typeset} of {page.formulas} formulas typeset")
            failures += [
                f"{where}: formula {i + 1} does not typeset ({message or 'TeX error'}): "
                f"{source.tex[i].strip()[:120]!r}"
                for i, message in page.errors
            ]
            failures += [f"{where}: raw TeX in the page text: {r!r}" for r in page.raw]
            print(f"check_math: {where}: {page.typeset}/{page.formulas} formulas typeset")
        if args.screenshot:
            heaviest = max(pages, key=pages.get)
            url = f"{base}/{heaviest.relative_to(args.site).as_posix()}"
            shot = f"--screenshot={args.screenshot.resolve()}"
            run_chromium(binary, url, "--window-size=1280,2000", shot)
            print(f"check_math: screenshot of {heaviest.relative_to(args.site)}: {args.screenshot}")
    finally:
        server.shutdown()
    if failures:
        print("check_math: FAILED\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print(f"check_math: {total} formulas on {len(pages)} pages typeset offline, no errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
