// The search page's result summaries quote each page's text, and a page's formulas are TeX there
// (\( ... \) inline, \[ ... \] displayed). Sphinx cuts a summary at 240 characters, which can split a
// formula. This script, loaded only on the search page (book/_ext/offline_assets.py), trims each
// summary to whole formulas, shows displayed ones inline, and has MathJax typeset the result.
"use strict";

// Trim `text` so that it holds only whole formulas: an opening delimiter left without its closing one
// at the end, or a closing one without its opening one at the start, is cut off with what it holds.
function wholeFormulas(text) {
  const inline = text.replace(/\\\[/g, "\\(").replace(/\\\]/g, "\\)");
  const firstClose = inline.indexOf("\\)");
  const firstOpen = inline.indexOf("\\(");
  let start = 0;
  if (firstClose !== -1 && (firstOpen === -1 || firstClose < firstOpen)) start = firstClose + 2;
  let end = inline.length;
  const lastOpen = inline.lastIndexOf("\\(");
  if (lastOpen !== -1 && inline.indexOf("\\)", lastOpen) === -1) end = lastOpen;
  const trimmed = inline.slice(start, end).trim();
  return (start > 0 ? "... " : "") + trimmed + (end < inline.length ? " ..." : "");
}

function mathJaxReady() {
  if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) {
    return window.MathJax.startup.promise;
  }
  return new Promise((resolve) => setTimeout(resolve, 50)).then(mathJaxReady);
}

if (typeof Search !== "undefined") {
  const makeSummary = Search.makeSearchSummary;
  Search.makeSearchSummary = (htmlText, keywords, anchor) => {
    const summary = makeSummary(htmlText, keywords, anchor);
    if (summary === null) return summary;
    summary.textContent = wholeFormulas(summary.textContent);
    mathJaxReady().then(() => window.MathJax.typesetPromise([summary]));
    return summary;
  };
}
