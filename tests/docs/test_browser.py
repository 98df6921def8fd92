"""The built documentation site in a real browser, with no network.

Builds the site as ``make docs`` does (assets from npm, ``mkdocs build --strict``), serves it on
127.0.0.1 and also opens it from disk (file://), loads every page in headless Chromium (Debian's
``chromium``, driven by tests/docs/_browser.py) with every host but 127.0.0.1 unresolvable, and
fails on: a formula left as raw ``\\(``/``\\[`` text or a KaTeX error, a JavaScript exception or
console error, a request that leaves the machine, a broken internal link, fragment or image, an
API page that documents nothing, a search that finds nothing, and a page whose tables lose
figures when rendered. Run it with ``pytest -m browser`` (CI: its own step of ``make test``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

import pytest

from tests.docs._browser import Browser, LoopbackServer, PageLoad, find_chromium

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CHROMIUM = find_chromium()

pytestmark = pytest.mark.browser
if CHROMIUM is None and not os.environ.get("SORTH_REQUIRE_BROWSER"):  # CI sets it: no skipping
    pytest.skip("no chromium on PATH (apt-get install chromium)", allow_module_level=True)

# What each page reports back: text nodes outside code and rendered math that still hold a TeX
# delimiter, the arithmatex spans KaTeX did not render, KaTeX error boxes, every link, image and
# id, and per mkdocstrings heading the length of its rendered docstring.
COLLECT_JS = r"""
(async () => {
  await document.fonts.ready;
  const skip = "script, style, pre, code, textarea, .katex";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
    acceptNode: (n) => n.parentElement.closest(skip) ? NodeFilter.FILTER_REJECT
                                                     : NodeFilter.FILTER_ACCEPT,
  });
  const raw = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const i = n.textContent.search(/\\[()[\]]/);
    if (i >= 0) raw.push(n.textContent.slice(Math.max(0, i - 20), i + 40).trim());
  }
  const math = [...document.querySelectorAll(".arithmatex")];
  const docs = {};
  for (const h of document.querySelectorAll("article .doc-heading[id]")) {
    const contents = h.parentElement.querySelector(":scope > .doc-contents");
    docs[h.id] = contents ? contents.innerText.trim().length : 0;
  }
  return {
    raw,
    math: math.length,
    unrendered: math.filter((e) => !e.querySelector(".katex")).map((e) => e.textContent),
    katexErrors: [...document.querySelectorAll(".katex-error")].map((e) => e.textContent),
    links: [...document.querySelectorAll("a[href]")].map((a) => a.href),
    images: [...document.images].map((i) => [i.src, i.complete && i.naturalWidth > 0]),
    ids: [...document.querySelectorAll("[id]")].map((e) => e.id),
    docs,
    article: (document.querySelector("article") || document.body).innerText,
  };
})()
"""

# Types a query into the search box; returns the text of the results (their math rendered).
SEARCH_JS = r"""
(async () => {
  const input = document.querySelector("input.md-search__input");
  input.focus();
  input.value = "shuffle convention";
  input.dispatchEvent(new Event("input", { bubbles: true }));
  input.dispatchEvent(new KeyboardEvent("keyup", { bubbles: true, key: "n" }));
  for (let t = 0; t < 100; t++) {
    await new Promise((r) => setTimeout(r, 50));
    const hits = [...document.querySelectorAll(".md-search-result__item")];
    if (hits.length) {
      const skip = (n) => n.parentElement.closest(".katex") ? NodeFilter.FILTER_REJECT
                                                            : NodeFilter.FILTER_ACCEPT;
      const walker = document.createTreeWalker(hits[0], NodeFilter.SHOW_TEXT, { acceptNode: skip });
      let text = "";
      for (let n = walker.nextNode(); n; n = walker.nextNode()) text += n.textContent;
      return { hits: hits.length, first: text, math: hits[0].querySelectorAll(".katex").length };
    }
  }
  return { hits: 0 };
})()
"""


# the site's pages: every docs/*.md but README.md and the generated measurement tables, which
# mkdocs.yml's exclude_docs keeps out of the site (they are included into other pages)
MD_PAGES = sorted(
    p
    for p in DOCS.rglob("*.md")
    if p.name != "README.md" and p.relative_to(DOCS).parts[0] != "measurements"
)


def _page(md: Path, crawl: dict[str, PageLoad]) -> str:
    """The built page of a docs/*.md file (``x.html``, or ``x/index.html`` with directory URLs)."""
    stem = md.relative_to(DOCS).with_suffix("").as_posix()
    return next(p for p in (f"{stem}.html", f"{stem}/index.html") if p in crawl)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as `make docs` builds it (npm assets, strict), into a temporary folder."""
    subprocess.run([ROOT / "scripts" / "get_docs_assets.sh"], check=True, timeout=300)
    out = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", "mkdocs.yml"]
    subprocess.run([*cmd, "-d", str(out)], cwd=ROOT, env=env, check=True, timeout=300)
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    if CHROMIUM is None:
        pytest.fail("SORTH_REQUIRE_BROWSER is set but no chromium is on PATH")
    b = Browser(CHROMIUM, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


@pytest.fixture(scope="module")
def server(site: Path, browser: Browser):  # after the browser: it is forked before any thread
    s = LoopbackServer(site)
    yield s
    s.close()


def _base(mode: str, site: Path, server: LoopbackServer) -> str:
    return server.url if mode == "http" else site.as_uri() + "/"


@pytest.fixture(scope="module")
def crawls(browser: Browser, site: Path, server: LoopbackServer) -> dict[str, dict[str, PageLoad]]:
    """Every page loaded once from the server and once from disk: {mode: {page: PageLoad}}."""
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    assert len(pages) == len(MD_PAGES) + 1, "the site's pages are not the docs' pages + 404"
    return {  # 404.html is a server's page (its links start at the server's root)
        mode: {
            page: browser.load(_base(mode, site, server) + page, COLLECT_JS)
            for page in pages
            if mode == "http" or page != "404.html"
        }
        for mode in ("http", "file")
    }


def _report(problems: list[str]) -> str:
    return f"{len(problems)} problem(s):\n  " + "\n  ".join(problems[:60])


def _event_problems(load: PageLoad, base: str) -> list[str]:
    out = [f"navigation failed: {load.error}"] if load.error else []
    for e in load.events:
        method, p = e["method"], e.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            text = d.get("exception", {}).get("description") or d.get("text")
            where = f"{d.get('url', '')}:{d.get('lineNumber')}"
            out.append(f"JS exception: {text.splitlines()[0]} ({where})")
        elif method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
            out.append(f"console.{p['type']}: {args[:200]}")
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            out.append(f"console error: {p['entry']['text']} {p['entry'].get('url', '')}")
        elif method == "Network.requestWillBeSent":
            url = p["request"]["url"]
            if not url.startswith((base, "data:", "blob:", "about:")):
                out.append(f"request leaves the site: {url[:120]}")
        elif method == "Network.responseReceived" and p["response"]["status"] >= 400:
            out.append(f"HTTP {p['response']['status']}: {p['response']['url']}")
    return out


@pytest.mark.parametrize("mode", ["http", "file"])
def test_no_js_error_and_nothing_from_the_network(crawls, site, server, mode: str) -> None:
    base = _base(mode, site, server)
    problems = [
        f"{page}: {x}" for page, load in crawls[mode].items() for x in _event_problems(load, base)
    ]
    assert not problems, _report(problems)


@pytest.mark.parametrize("mode", ["http", "file"])
def test_every_formula_is_rendered(crawls, mode: str) -> None:
    problems, formulas = [], 0
    for page, load in crawls[mode].items():
        dom = load.dom
        formulas += dom.get("math", 0)
        problems += [f"{page}: raw TeX delimiter in the text: {t!r}" for t in dom.get("raw", [])]
        problems += [f"{page}: not rendered: {t!r}" for t in dom.get("unrendered", [])]
        problems += [f"{page}: KaTeX error: {t!r}" for t in dom.get("katexErrors", [])]
    assert not problems, _report(problems)
    assert formulas > 100, f"only {formulas} formulas on the whole site: is arithmatex on?"
    gs_page = _page(DOCS / "concepts" / "gs-matrices.md", crawls[mode])
    assert crawls[mode][gs_page].dom["math"] > 20


def _local_path(url: str, base: str, site: Path) -> tuple[Path, str] | None:
    """(file in the site, fragment) for a link into the site; None for an outside link."""
    if not url.startswith(base):
        return None
    url, fragment = urldefrag(url)
    rel = unquote(urlsplit(url).path)[len(unquote(urlsplit(base).path)) :]
    if rel == "" or rel.endswith("/"):  # a server answers with index.html, a disk does not
        return (site / rel / "index.html" if base.startswith("http") else site / rel), fragment
    return site / rel, fragment


@pytest.mark.parametrize("mode", ["http", "file"])
def test_internal_links_fragments_and_images_resolve(crawls, site, server, mode: str) -> None:
    base = _base(mode, site, server)
    ids = {site / page: set(load.dom.get("ids", [])) for page, load in crawls[mode].items()}
    problems, checked = [], 0
    for page, load in crawls[mode].items():
        for url in load.dom.get("links", []):
            target = _local_path(url, base, site)
            if target is None:
                continue
            checked += 1
            path, fragment = target
            if not path.is_file():
                problems.append(f"{page}: broken link {url[len(base) :]}")
            elif fragment and path in ids and unquote(fragment) not in ids[path]:
                problems.append(f"{page}: link to a missing anchor {url[len(base) :]}")
        for src, ok in load.dom.get("images", []):
            if not ok:
                problems.append(f"{page}: image does not load: {src}")
    assert not problems, _report(problems)
    assert checked > 200, f"only {checked} internal links seen"


def _api_objects(md: Path) -> list[str]:
    """The objects a `::: name` block of an API page shows with a heading."""
    names = []
    for block in re.split(r"^(?=::: )", md.read_text(), flags=re.M)[1:]:
        name = block.split()[1]
        if "show_root_heading: false" not in block.split("\n\n")[0]:
            names.append(name)
    return names


@pytest.mark.parametrize("md", sorted((DOCS / "api").glob("*.md")), ids=lambda p: p.stem)
def test_api_page_documents_every_object(crawls, md: Path) -> None:
    dom = crawls["http"][_page(md, crawls["http"])].dom
    names = _api_objects(md)
    assert names, f"{md.name} has no ::: block"
    missing = [n for n in names if n not in dom["docs"]]
    assert not missing, f"{md.name}: rendered without {missing}"
    empty = [n for n in names if dom["docs"][n] == 0]
    assert not empty, f"{md.name}: no docstring rendered for {empty}"


@pytest.mark.parametrize("mode", ["http", "file"])
def test_search_finds_pages_offline(site, server, browser, mode: str) -> None:
    base = _base(mode, site, server)
    load = browser.load(base + "index.html", SEARCH_JS)
    problems = _event_problems(load, base)
    assert load.dom["hits"], f"search found nothing for 'shuffle convention' ({mode}); {problems}"
    assert not problems, _report(problems)
    assert "The shuffle" in load.dom["first"]
    assert load.dom["math"] > 0, f"no rendered math in the search result {load.dom['first']!r}"
    assert not re.search(r"\\[(\[]", load.dom["first"]), load.dom["first"][:200]


def _table_figures(md: Path) -> list[str]:
    """The numeric cells (``0.941 ± 0.002``, ``1,423,104``) of a page's Markdown tables, as text."""
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
    cells = set()
    for line in text.splitlines():
        if not line.startswith("|") or re.fullmatch(r"\|[-:| ]+\|", line.strip()):
            continue
        for cell in re.split(r"(?<!\\)\|", line.strip().strip("|")):
            cell = re.sub(r"\*\*|`", "", cell).replace("\\|", "|").strip()
            if "\\(" not in cell and "](" not in cell and re.search(r"\d\.\d|\d,\d{3}", cell):
                cells.add(cell)
    return sorted(cells)


def test_benchmark_and_evidence_pages_have_tables() -> None:
    assert len(_table_figures(DOCS / "benchmarks.md")) > 50
    assert len(_table_figures(DOCS / "evidence.md")) > 50


@pytest.mark.parametrize("md", MD_PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_every_table_figure_shows_on_the_rendered_page(crawls, md: Path) -> None:
    """A table that renders broken (a stray pipe, a missing blank line) loses its figures."""
    text = " ".join(crawls["http"][_page(md, crawls["http"])].dom["article"].split())
    missing = [c for c in _table_figures(md) if " ".join(c.split()) not in text]
    assert not missing, f"{md.name}: figures of its tables not on the rendered page: {missing[:10]}"
