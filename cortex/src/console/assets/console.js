// QSC console progressive enhancement: every page works without this file.
// - a banner when the server reports a change (server-sent events), instead of a reload
//   that would throw away what the user was doing;
// - the expiry countdown of held actions ticks every second.
(function () {
  "use strict";
  // A page left for another may stay alive in the back/forward cache with its stream open;
  // a browser keeps six connections per host over HTTP/1.1, so six such pages would stall
  // every next request. The stream is closed when the page is hidden, opened when shown.
  if (window.EventSource) {
    var source = null;
    var listen = function () {
      source = new EventSource("/console/stream");
      source.addEventListener("change", function () {
        var banner = document.getElementById("live");
        if (banner) { banner.hidden = false; }
      });
    };
    listen();
    window.addEventListener("pagehide", function () {
      if (source) { source.close(); source = null; }
    });
    window.addEventListener("pageshow", function (event) {
      if (event.persisted && !source) { listen(); }
    });
  }
  var counters = document.querySelectorAll(".countdown");
  if (counters.length) {
    setInterval(function () {
      counters.forEach(function (el) {
        var left = Math.max(0, parseInt(el.dataset.seconds, 10) - 1);
        el.dataset.seconds = String(left);
        el.textContent = String(left);
      });
    }, 1000);
  }
})();
