// flask-afterward dashboard: keep the page's [data-live] region up to date.
// Server-Sent Events first (?live=events); if the stream fails, poll ?live=fragment.
// Without this script every page still works: it is only a static snapshot.
(function () {
  "use strict";
  var POLL_MS = 2000;
  var MAX_STREAM_ERRORS = 3;

  function liveUrl(mode) {
    var url = new URL(window.location.href);
    url.searchParams.delete("done");
    url.searchParams.set("live", mode);
    return url.toString();
  }

  function start() {
    var region = document.querySelector("[data-live]");
    if (!region) return;
    var status = document.querySelector("[data-live-status]");
    var say = function (mode, text) {
      if (!status) return;
      status.setAttribute("data-mode", mode);
      status.textContent = text;
    };
    var replace = function (html) {
      // Keep a form the user is typing in or a button they hold: skip while focused.
      var active = document.activeElement;
      if (active && region.contains(active) && active.tagName !== "BODY" && active.tagName !== "A") return;
      if (region.innerHTML !== html) region.innerHTML = html;
    };

    function poll() {
      say("polling", "live (polling)");
      var timer = null;
      var tick = function () {
        fetch(liveUrl("fragment"), { credentials: "same-origin", headers: { Accept: "text/html" } })
          .then(function (response) { return response.ok ? response.text() : null; })
          .then(function (html) { if (html !== null) replace(html); })
          .catch(function () { say("polling", "offline, retrying"); })
          .then(function () { timer = window.setTimeout(tick, POLL_MS); });
      };
      tick();
      return function () { window.clearTimeout(timer); };
    }

    if (!("EventSource" in window)) { poll(); return; }
    var errors = 0;
    var source = new EventSource(liveUrl("events"));
    source.addEventListener("open", function () { errors = 0; say("live", "live"); });
    source.addEventListener("update", function (event) { errors = 0; replace(JSON.parse(event.data)); });
    source.addEventListener("error", function () {
      // EventSource reconnects by itself after a stream ends; fall back only when
      // it keeps failing (a proxy that buffers or refuses streams).
      errors += 1;
      if (errors >= MAX_STREAM_ERRORS || source.readyState === EventSource.CLOSED) {
        source.close();
        poll();
      }
    });
    window.addEventListener("pagehide", function () { source.close(); });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
