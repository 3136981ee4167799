// context-lookups explorer: the only script besides htmx (no inline scripts: CSP).
(function () {
  "use strict";
  if (window.htmx) {
    htmx.config.allowEval = false;
    htmx.config.historyCacheSize = 10;
    htmx.config.refreshOnHistoryMiss = true;  // a miss reloads the URL: the server renders it
    // Show 404/422/503 error panels (htmx does not swap 4xx/5xx by default).
    htmx.config.responseHandling = [
      { code: "204", swap: false },
      { code: "[23]..", swap: true },
      { code: "(404|422|503)", swap: true, error: false },
      { code: "[45]..", swap: false, error: true },
      { code: "...", swap: false },
    ];
  }
  // htmx keeps a snapshot of the page's HTML for Back; a form field's typed value is not part of
  // the HTML, so write it in before the snapshot is taken (Back then restores the prompt box
  // together with the live view it produced).
  document.addEventListener("htmx:beforeHistorySave", function () {
    document.querySelectorAll("textarea").forEach(function (t) { t.textContent = t.value; });
    document.querySelectorAll("input").forEach(function (i) {
      if (i.type === "checkbox" || i.type === "radio") {
        if (i.checked) { i.setAttribute("checked", ""); } else { i.removeAttribute("checked"); }
      } else if (i.type !== "hidden" && i.type !== "submit") {
        i.setAttribute("value", i.value);
      }
    });
  });
  // A restored snapshot taken before that fix, or any view whose box is empty: take the prompt
  // back from the live result it shows.
  document.addEventListener("htmx:historyRestore", function () {
    var box = document.getElementById("live-prompt");
    var res = document.querySelector("#live .live-result");
    if (box && res && !box.value) { box.value = res.getAttribute("data-prompt") || ""; }
  });

  // Keep keyboard focus on the control that was used: the live panel is replaced by the
  // response, which would drop focus to <body>. Remember the control (a token button by its
  // position, a head checkbox by its head) and focus its counterpart in the new panel.
  var refocus = null;
  function describe(el) {
    if (!el || !el.matches) { return null; }
    if (el.matches("#live button.tok")) { return "#live button.tok[value='" + el.value + "']"; }
    if (el.matches("#live input.abl-box")) { return "#live input.abl-box[value='" + el.value + "']"; }
    if (el.matches("#live button.pick-head")) { return "#live button.pick-head[value='" + el.value + "']"; }
    if (el.matches("#live button.ko-src")) { return "#live button.ko-src[value='" + el.value + "']"; }
    if (el.id) { return "#" + el.id; }
    return null;
  }
  document.addEventListener("submit", function (ev) {
    if (ev.target && ev.target.id === "live-form") {
      refocus = describe(ev.submitter && ev.submitter !== ev.target ? ev.submitter : document.activeElement);
    }
  }, true);
  document.addEventListener("htmx:afterSettle", function (ev) {
    if (!refocus || !ev.detail || !ev.detail.target || ev.detail.target.id !== "live") { return; }
    var el = document.querySelector(refocus);
    refocus = null;
    if (el && document.activeElement !== el) { el.focus({ preventScroll: true }); }
  });
  // Ctrl+Enter (Cmd+Enter on a Mac) in the prompt box (or the fire page's text box) runs it.
  var boxes = { "live-prompt": "live-form", "fire-text": "fire-form" };
  // A box whose model is not on this server is off: disabled, and Ctrl+Enter does nothing (it
  // used to submit anyway and add a second copy of the notice).
  function isOff(box, form) {
    if (!form || box.disabled || box.getAttribute("aria-disabled") === "true") { return true; }
    if (form.getAttribute("aria-disabled") === "true") { return true; }
    var run = form.querySelector("button[type=submit]:not([name])");
    return !!(run && run.disabled);
  }
  document.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey) && ev.target && boxes[ev.target.id]) {
      ev.preventDefault();
      var form = document.getElementById(boxes[ev.target.id]);
      if (!isOff(ev.target, form)) { form.requestSubmit(); }
    }
  });
  // Ticking a head in the live heatmap re-runs the live pass with those heads ablated.
  document.addEventListener("change", function (ev) {
    var t = ev.target;
    if (t && t.classList && t.classList.contains("abl-box")) {
      var form = document.getElementById("live-form");
      if (form) { refocus = describe(t); form.requestSubmit(); }
    }
  });
  // Inner scroll areas (.xscroll: wide tables and heatmaps on a narrow screen) say that they
  // scroll: a "scroll →" line above them and a shadow on the side with more (class overflowing,
  // at-end when scrolled to the end). The live heatmap's selected head is scrolled into view.
  function cue(box) {
    var over = box.scrollWidth > box.clientWidth + 1;
    box.classList.toggle("overflowing", over);
    box.classList.toggle("at-end", !over || box.scrollLeft + box.clientWidth >= box.scrollWidth - 1);
    var prev = box.previousElementSibling;
    var has = prev && prev.classList.contains("scroll-hint");
    if (over && !has) {
      var hint = document.createElement("div");
      hint.className = "scroll-hint";
      hint.setAttribute("aria-hidden", "true");
      hint.textContent = "scroll \u2192";
      box.parentNode.insertBefore(hint, box);
    } else if (!over && has) {
      prev.remove();
    }
  }
  function showPicked(root) {
    root.querySelectorAll("table.heat td.picked").forEach(function (cell) {
      var box = cell.closest(".xscroll");
      if (!box || box.scrollWidth <= box.clientWidth) { return; }
      var b = box.getBoundingClientRect(), c = cell.getBoundingClientRect();
      box.scrollLeft += (c.left - b.left) - (box.clientWidth - c.width) / 2;
    });
  }
  function cues(root) {
    root = root || document;
    showPicked(root);
    document.querySelectorAll(".xscroll").forEach(cue);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { cues(); });
  } else {
    cues();
  }
  var resizing = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizing);
    resizing = setTimeout(function () { cues(); }, 150);
  });
  document.addEventListener("htmx:afterSettle", function (ev) { cues(ev.detail && ev.detail.target); });
  document.addEventListener("scroll", function (ev) {
    var t = ev.target;
    if (t && t.classList && t.classList.contains("xscroll")) { cue(t); }
  }, true);
  // A new prompt forgets the clicked position of the previous one, and the tokens of the
  // previous result (buttons of the live form carrying pos=) cannot be clicked until it runs.
  document.addEventListener("input", function (ev) {
    if (ev.target && ev.target.id === "live-prompt") {
      var pos = document.getElementById("live-pos");
      if (pos) { pos.remove(); }
      var res = document.querySelector("#live .live-result");
      var stale = !res || res.getAttribute("data-prompt") !== ev.target.value;
      document.querySelectorAll("#live .live-tokens button.tok, #live button.ko-src").forEach(function (b) {
        b.disabled = stale;
      });
    }
  });
})();
