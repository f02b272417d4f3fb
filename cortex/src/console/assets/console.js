// QSC console progressive enhancement: every page works without this file.
// - a banner when the server reports a change (server-sent events), instead of a reload
//   that would throw away what the user was doing;
// - the expiry countdown of held actions ticks every second.
(function () {
  "use strict";
  if (window.EventSource) {
    var source = new EventSource("/console/stream");
    source.addEventListener("change", function () {
      var banner = document.getElementById("live");
      if (banner) { banner.hidden = false; }
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
