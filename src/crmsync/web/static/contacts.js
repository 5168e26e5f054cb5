// The Contacts page: "Select all matching" and the page checkbox, and badges that follow the
// sync live (every few seconds while a visible contact is still on its way to a CRM).
"use strict";

(function () {
  var PERIOD_MS = 2000;
  var MOVING = ["Selected", "Queued", "Processing"];
  var form = document.getElementById("contact-actions");
  if (!form) {
    return;
  }
  var rows = Array.prototype.slice.call(form.querySelectorAll("input[name='ids']"));
  var all = document.getElementById("all-matching");
  var page = document.getElementById("check-page");

  if (page) {
    page.addEventListener("change", function () {
      rows.forEach(function (box) { box.checked = page.checked; });
    });
  }
  if (all) {
    // Everything matching is chosen: the page's checkboxes say so and stand aside.
    all.addEventListener("change", function () {
      rows.forEach(function (box) {
        box.checked = all.checked || box.checked;
        box.disabled = all.checked;
      });
      if (page) {
        page.checked = all.checked;
        page.disabled = all.checked;
      }
    });
  }

  function badges() {
    return Array.prototype.slice.call(form.querySelectorAll("tr[data-id] .badge"));
  }

  function moving() {
    return badges().some(function (badge) { return MOVING.indexOf(badge.textContent) >= 0; });
  }

  function apply(statuses) {
    form.querySelectorAll("tr[data-id]").forEach(function (row) {
      var found = statuses[row.getAttribute("data-id")];
      if (!found) {
        return;
      }
      row.querySelectorAll(".badge").forEach(function (badge) {
        var status = found[badge.getAttribute("data-crm")];
        if (status && badge.textContent !== status) {
          badge.textContent = status;
          badge.className = "badge badge-" + status.toLowerCase();
        }
      });
    });
  }

  function refresh() {
    if (!moving()) {
      setTimeout(refresh, PERIOD_MS * 3);
      return;
    }
    var query = new URLSearchParams();
    form.querySelectorAll("tr[data-id]").forEach(function (row) {
      query.append("id", row.getAttribute("data-id"));
    });
    fetch("/contacts/badges?" + query.toString(), { credentials: "same-origin", cache: "no-store" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (statuses) {
        if (statuses) {
          apply(statuses);
        }
      })
      .catch(function () { /* the next round tries again */ })
      .then(function () { setTimeout(refresh, PERIOD_MS); });
  }

  setTimeout(refresh, PERIOD_MS);
})();
