// Corral's monitor: keeps every [data-live] part of a page current by fetching its fragment
// every couple of seconds and swapping it in. No framework, no build step, nothing from outside.
(function () {
  "use strict";
  var period = parseInt(document.body.dataset.refreshMs || "2000", 10);

  function busy(element) {
    // Never swap under someone typing into a form or choosing in a menu of that part.
    var active = document.activeElement;
    return active && element.contains(active) && /INPUT|SELECT|TEXTAREA/.test(active.tagName);
  }

  function stickToBottom(element) {
    var logs = element.querySelectorAll("pre.log");
    for (var i = 0; i < logs.length; i++) logs[i].scrollTop = logs[i].scrollHeight;
  }

  function refresh(element) {
    if (document.hidden || busy(element)) return Promise.resolve();
    return fetch(element.dataset.live, {credentials: "same-origin", headers: {"Accept": "text/html"}})
      .then(function (response) {
        if (!response.ok) throw new Error(response.status + " " + response.statusText);
        return response.text();
      })
      .then(function (html) {
        if (busy(element)) return;
        element.innerHTML = html;
        element.classList.remove("stale");
        element.dataset.updatedAt = String(Date.now());
        stickToBottom(element);
      })
      .catch(function () { element.classList.add("stale"); });
  }

  function loop() {
    var parts = document.querySelectorAll("[data-live]");
    var pending = [];
    for (var i = 0; i < parts.length; i++) pending.push(refresh(parts[i]));
    Promise.all(pending).then(function () { window.setTimeout(loop, period); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var parts = document.querySelectorAll("[data-live]");
    for (var i = 0; i < parts.length; i++) stickToBottom(parts[i]);
    window.setTimeout(loop, period);
  });
})();
