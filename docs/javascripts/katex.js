// Render the math pymdownx.arithmatex (generic mode) leaves in the pages: <span class="arithmatex">
// \( ... \)</span> inline, <div class="arithmatex">\[ ... \]</div> display; and the inline
// \( ... \) that headings carry as plain text into the navigation (table of contents). KaTeX
// itself is fetched from npm by the docs build (scripts/get_docs_assets.sh) and served with the
// site, so the formulas render with no network. A formula KaTeX cannot parse stays as TeX and is
// reported on the console, which the browser test (tests/docs/test_browser.py) turns into a failure.
function renderTeX(el, tex, displayMode, source) {
  try {
    katex.render(tex, el, { displayMode, throwOnError: true });
  } catch (err) {
    el.textContent = source; // show the TeX rather than nothing
    console.error(`KaTeX could not render ${source}: ${err.message}`);
  }
}

document$.subscribe(({ body }) => {
  for (const el of body.querySelectorAll(".arithmatex")) {
    if (el.querySelector(".katex")) continue; // already rendered
    const tex = el.textContent.trim();
    renderTeX(el, tex.slice(2, -2), tex.startsWith("\\["), tex);
  }
  const walker = document.createTreeWalker(body, NodeFilter.SHOW_TEXT, {
    acceptNode: (n) => (n.parentElement.closest(".md-nav") && n.textContent.includes("\\(")
      ? NodeFilter.FILTER_ACCEPT : NodeFilter.FILTER_REJECT),
  });
  const nodes = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) nodes.push(n);
  for (const node of nodes) {
    const parts = node.textContent.split(/\\\((.+?)\\\)/); // text, tex, text, tex, ..., text
    node.replaceWith(...parts.map((part, i) => {
      if (i % 2 === 0) return part;
      const span = document.createElement("span");
      renderTeX(span, part, false, `\\(${part}\\)`);
      return span;
    }));
  }
});
