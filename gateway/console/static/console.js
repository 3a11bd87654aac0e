/* falq console: the only script of its own (the CSP forbids inline scripts).
   Copy buttons: <button data-copy="ID"> copies the text of the element with that id. */
"use strict";
document.addEventListener("click", function (ev) {
  var btn = ev.target.closest ? ev.target.closest("button[data-copy]") : null;
  if (!btn) { return; }
  var src = document.getElementById(btn.getAttribute("data-copy"));
  if (!src) { return; }
  var text = src.textContent;
  var done = function () { btn.classList.add("copied"); setTimeout(function () { btn.classList.remove("copied"); }, 1500); };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, function () { select(src); });
  } else {
    select(src);
  }
});
function select(el) {
  var range = document.createRange();
  range.selectNodeContents(el);
  var sel = window.getSelection();
  sel.removeAllRanges();
  sel.addRange(range);
  try { document.execCommand("copy"); } catch (e) { /* the text stays selected for Ctrl-C */ }
}

/* An image that does not load: ask its route why. 410 means the object is no longer in the
   bucket (deleted, or expired by a lifecycle rule); anything else has no preview. Either way a
   labelled placeholder replaces the broken image. (Error events do not bubble: capture them.) */
function placeholder(img) {
  if (!img || img.tagName !== "IMG" || img.getAttribute("data-missing") !== null) { return; }
  if (!img.classList.contains("thumb") && !img.classList.contains("full")) { return; }
  img.setAttribute("data-missing", "");
  var show = function (text, kind) {
    var box = document.createElement("div");
    box.className = "noimg " + kind + (img.classList.contains("full") ? " fullmissing" : "");
    box.setAttribute("role", "img");
    box.setAttribute("aria-label", (img.getAttribute("alt") || "image") + ": " + text);
    var span = document.createElement("span");
    span.textContent = text;
    box.appendChild(span);
    img.replaceWith(box);
  };
  fetch(img.currentSrc || img.src, {credentials: "same-origin", cache: "no-store"}).then(function (resp) {
    show(resp.status === 410 ? "no longer in the bucket" : "no preview", resp.status === 410 ? "missing" : "nopreview");
  }, function () { show("no preview", "nopreview"); });
}
document.addEventListener("error", function (ev) { placeholder(ev.target); }, true);
/* Images that failed before this script ran. */
function brokenSoFar() {
  Array.prototype.forEach.call(document.querySelectorAll("img.thumb, img.full"), function (img) {
    if (img.complete && img.naturalWidth === 0) { placeholder(img); }
  });
}
if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", brokenSoFar); } else { brokenSoFar(); }
