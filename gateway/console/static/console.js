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
