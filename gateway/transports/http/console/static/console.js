// Live updates for console pages: a container with data-live="URL" is fetched again and replaced
// whenever the server's event stream (/console/live) says work changed. No other script runs here.
(function () {
  "use strict";
  var box = document.querySelector("[data-live]");
  if (!box || !window.EventSource) { return; }
  var status = document.querySelector("[data-live-status]");
  var busy = false, again = false;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(box.getAttribute("data-live"), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (answer) {
        if (answer.redirected || !answer.ok) { throw new Error("status " + answer.status); }
        return answer.text();
      })
      .then(function (html) {
        var page = new DOMParser().parseFromString(html, "text/html");
        var fresh = page.querySelector("main");
        // Keep what the person is typing: replace only when no field in the box has the focus.
        if (fresh && !box.contains(document.activeElement)) { box.innerHTML = fresh.innerHTML; }
        if (status) { status.textContent = "Live: updated " + new Date().toLocaleTimeString(); }
      })
      .catch(function () { if (status) { status.textContent = "Live: update failed; reload the page."; } })
      .then(function () { busy = false; if (again) { again = false; refresh(); } });
  }
  var source = new EventSource("/console/live");
  source.addEventListener("changed", refresh);
})();
