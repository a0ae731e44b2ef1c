"""A reader's view: headless Chromium (Debian package, driven by Playwright) over the built book.

For every page in _toc.yml: no console or page errors, every figure loaded and
described (alt text or caption), math typeset by the offline MathJax, no error
or stderr output, launch buttons pointing at notebooks that exist in the
repository, every internal link resolving, and exercise solutions hidden until
clicked. Full-page screenshots go to _build/screenshots/ (CI artifacts).
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import socketserver
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.notebooks.conftest import BUILD, HTML, ROOT, toc_files

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
PAGES = toc_files()
CHROME_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(built_html):
    handler = functools.partial(_Quiet, directory=str(built_html))
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
        httpd.shutdown()


@pytest.fixture(scope="module")
def browser(scratch_home):
    if CHROMIUM is None:
        pytest.fail("Debian chromium is not installed: run `make browser-deps` (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS, env=scratch_home)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.problems = []
    pg.on("console", lambda m: pg.problems.append(f"console {m.type}: {m.text}")
          if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.problems.append(f"page error: {e}"))
    pg.on("requestfailed", lambda r: pg.problems.append(f"request failed: {r.url}")
          if r.url.startswith("http://127.0.0.1") else None)
    yield pg
    context.close()


def _open(page, server, doc):
    page.goto(f"{server}/{doc}.html", wait_until="networkidle")
    # MathJax loads deferred; wait for it on pages with math, then for its first typeset pass
    page.wait_for_function("() => document.querySelectorAll('main .math').length === 0 || "
                           "!!(window.MathJax && MathJax.startup && MathJax.startup.promise)", timeout=15_000)
    page.evaluate("async () => { if (window.MathJax && MathJax.startup) await MathJax.startup.promise; }")
    return page


@pytest.mark.parametrize("doc", PAGES)
def test_page_reads_cleanly(page, server, doc):
    _open(page, server, doc)
    shots = BUILD / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / f"{doc.replace('/', '_')}.png"), full_page=True)
    assert page.problems == [], "\n".join(page.problems)

    images = page.evaluate("""() => Array.from(document.querySelectorAll('main img')).map(img => ({
        src: img.getAttribute('src'), ok: img.complete && img.naturalWidth > 0,
        alt: (img.getAttribute('alt') || '').trim(),
        caption: img.closest('figure')
            ? (img.closest('figure').querySelector('figcaption') || {}).innerText || '' : ''}))""")
    for img in images:
        assert img["ok"], f"image did not load: {img['src']}"
        described = img["caption"].strip() or (img["alt"] and not img["alt"].endswith(".png"))
        assert described, f"image without alt text or caption: {img['src']}"

    math = page.evaluate("() => document.querySelectorAll('main .math').length")
    typeset = page.evaluate("() => document.querySelectorAll('main mjx-container').length")
    assert typeset >= math, f"{math} math elements but only {typeset} typeset by MathJax"
    raw = page.evaluate("() => document.querySelector('main').innerText")
    assert not re.search(r"\\\(|\\\[|\$\$", raw), "untypeset TeX is visible on the page"

    errors = page.evaluate("""() => document.querySelectorAll(
        'main .output.error, main .output.traceback, main .output.stderr, main .cell_output .stderr').length""")
    assert errors == 0, f"{errors} error/stderr outputs on the page"


@pytest.mark.parametrize("doc", [d for d in PAGES if re.match(r"chapters/\d\d_", d)])
def test_launch_buttons_open_the_paired_notebook(page, server, doc):
    _open(page, server, doc)
    links = page.evaluate("() => Array.from(document.querySelectorAll('a')).map(a => a.href)")
    colab = [u for u in links if "colab.research.google.com" in u]
    binder = [u for u in links if "mybinder.org" in u]
    assert colab and binder, "the page has no Colab or Binder launch button"
    for url in colab:
        path = url.split("/blob/main/", 1)[1]
        assert path.endswith(".ipynb") and (ROOT / path).exists(), f"Colab link to missing {path}"
    for url in binder:
        path = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)["urlpath"][0].removeprefix("tree/")
        assert path.endswith(".ipynb") and (ROOT / path).exists(), f"Binder link to missing {path}"


@pytest.mark.parametrize("doc", [d for d in PAGES if re.match(r"chapters/\d\d_", d)])
def test_solutions_hidden_until_clicked(page, server, doc):
    _open(page, server, doc)
    solutions = page.locator("main .solution.dropdown")
    assert solutions.count() >= 1, "a chapter has exercise solutions"
    first = solutions.first
    body = first.locator("> :not(.admonition-title)").first
    assert not body.is_visible(), "a solution is visible before it is clicked"
    first.locator("button.toggle-button").click()  # the title also holds a link to the exercise
    page.wait_for_timeout(300)
    assert body.is_visible(), "clicking the solution title does not reveal it"


def test_internal_links_resolve(server):
    bad = []
    for html_file in sorted(HTML.rglob("*.html")):
        rel = html_file.relative_to(HTML).as_posix()
        if rel.startswith("_static/"):  # theme templates shipped as assets, not pages
            continue
        text = html_file.read_text(errors="replace")
        for href in set(re.findall(r'href="([^"#?]+)[^"]*"', text)):
            if re.match(r"^[a-z]+:", href) or href.startswith("//"):
                continue
            target = urllib.parse.urljoin(f"{server}/{rel}", href)
            try:
                urllib.request.urlopen(target, timeout=5).close()
            except urllib.error.URLError as exc:
                bad.append(f"{rel} -> {href} ({exc})")
    assert not bad, "broken internal links:\n" + "\n".join(sorted(bad)[:20])


def test_search_finds_chapter_text(page, server):
    page.goto(f"{server}/search.html?q=Jacobian", wait_until="networkidle")
    page.wait_for_selector("#search-results li", timeout=15_000)
    assert page.locator("#search-results li").count() >= 1


def test_next_links_walk_the_table_of_contents(page, server):
    """Following each page's "next" link visits the pages in _toc.yml order."""
    page.goto(f"{server}/{PAGES[0]}.html", wait_until="domcontentloaded")
    visited = [PAGES[0]]
    for _ in range(len(PAGES) - 1):
        nxt = page.locator("a.right-next")
        assert nxt.count() == 1, f"no 'next' link on {visited[-1]}"
        nxt.click()
        page.wait_for_load_state("domcontentloaded")
        path = urllib.parse.urlparse(page.url).path.lstrip("/")
        visited.append(path.removesuffix(".html"))
    assert visited == PAGES
    assert page.locator("a.right-next").count() == 0, "the last page should have no 'next' link"
