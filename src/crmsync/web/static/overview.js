// Refreshes the overview's cards every few seconds without reloading the page: the server
// renders them (GET /overview/cards) and this swaps them in, keeping keyboard focus in place.
"use strict";

(function () {
  var PERIOD_MS = 3000;
  var cards = document.getElementById("cards");
  var updated = document.getElementById("updated");
  if (!cards) {
    return;
  }
  var source = cards.getAttribute("data-source");

  function swap(html) {
    var focused = document.activeElement;
    var focusedId = focused && cards.contains(focused) ? focused.id : "";
    cards.innerHTML = html;
    var summary = cards.querySelector("[data-updated]");
    if (summary && updated) {
      updated.textContent = "Updated " + summary.getAttribute("data-updated");
    }
    if (focusedId) {
      var again = document.getElementById(focusedId);
      if (again) {
        again.focus();
      }
    }
  }

  function refresh() {
    if (document.visibilityState === "hidden") {
      setTimeout(refresh, PERIOD_MS);
      return;
    }
    fetch(source, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) {
          window.location.assign("/login");
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html !== null) {
          swap(html);
        }
      })
      .catch(function () { /* the next round tries again */ })
      .then(function () {
        setTimeout(refresh, PERIOD_MS);
      });
  }

  setTimeout(refresh, PERIOD_MS);
})();
