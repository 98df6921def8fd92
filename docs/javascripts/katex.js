// Render the math pymdownx.arithmatex (generic mode) leaves in the pages: <span class="arithmatex">
// \( ... \)</span> inline, <div class="arithmatex">\[ ... \]</div> display; and the math that
// reaches the navigation (headings in the table of contents) and the search results as plain
// text. KaTeX itself is fetched from npm by the docs build (scripts/get_docs_assets.sh) and
// served with the site, so the formulas render with no network. A formula KaTeX cannot parse
// stays as TeX and is reported on the console, which the browser test
// (tests/docs/test_browser.py) turns into a failure.
function renderTeX(el, tex, displayMode, source) {
  try {
    katex.render(tex, el, { displayMode, throwOnError: true });
  } catch (err) {
    el.textContent = source; // show the TeX rather than nothing
    console.error(`KaTeX could not render ${source}: ${err.message}`);
  }
}

// Every \( ... \) and \[ ... \] in the text nodes under root (outside code and rendered math),
// rendered inline: these are one-line labels and snippets.
const TEXT_MATH = /\\\((.+?)\\\)|\\\[(.+?)\\\]/gs;
function renderTextMath(root) {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
    acceptNode: (n) => {
      const math = n.textContent.search(TEXT_MATH) >= 0 && !n.parentElement.closest("code, .katex");
      return math ? NodeFilter.FILTER_ACCEPT : NodeFilter.FILTER_REJECT;
    },
  });
  const nodes = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) nodes.push(n);
  for (const node of nodes) {
    const text = node.textContent;
    const parts = [];
    let last = 0;
    for (const m of text.matchAll(TEXT_MATH)) {
      parts.push(text.slice(last, m.index));
      const span = document.createElement("span");
      renderTeX(span, m[1] ?? m[2], false, m[0]);
      parts.push(span);
      last = m.index + m[0].length;
    }
    parts.push(text.slice(last));
    node.replaceWith(...parts);
  }
}

document$.subscribe(({ body }) => {
  for (const el of body.querySelectorAll(".arithmatex")) {
    if (el.querySelector(".katex")) continue; // already rendered
    const tex = el.textContent.trim();
    renderTeX(el, tex.slice(2, -2), tex.startsWith("\\["), tex);
  }
  for (const nav of body.querySelectorAll(".md-nav")) renderTextMath(nav);
  const results = body.querySelector(".md-search-result__list");
  if (results) {
    new MutationObserver(() => renderTextMath(results)).observe(results, { childList: true });
  }
});
