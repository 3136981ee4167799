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
  // Ticking a head in the live heatmap re-runs the live pass with those heads ablated.
  document.addEventListener("change", function (ev) {
    var t = ev.target;
    if (t && t.classList && t.classList.contains("abl-box")) {
      var form = document.getElementById("live-form");
      if (form) { form.requestSubmit(); }
    }
  });
  // A new prompt forgets the clicked position of the previous one, and the tokens of the
  // previous result (buttons of the live form carrying pos=) cannot be clicked until it runs.
  document.addEventListener("input", function (ev) {
    if (ev.target && ev.target.id === "live-prompt") {
      var pos = document.getElementById("live-pos");
      if (pos) { pos.remove(); }
      var res = document.querySelector("#live .live-result");
      var stale = !res || res.getAttribute("data-prompt") !== ev.target.value;
      document.querySelectorAll("#live .live-tokens button.tok").forEach(function (b) { b.disabled = stale; });
    }
  });
})();
