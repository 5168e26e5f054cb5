// The Import page: a file over the server's limit is refused here, before it is sent (the server
// refuses it too, but a browser may show a reset connection instead of its answer); while a
// file uploads and imports, the button says so and cannot be pressed twice.
"use strict";

(function () {
  var form = document.getElementById("import-form");
  var field = document.getElementById("import-file");
  var note = document.getElementById("import-too-large");
  var button = document.getElementById("import-submit");
  if (!form || !field || !note || !button) {
    return;
  }
  var limit = Number(form.getAttribute("data-max-bytes"));
  var mib = function (bytes) {
    return (bytes / 1048576).toFixed(1) + " MiB";
  };
  field.addEventListener("change", function () {
    note.hidden = true;
    note.textContent = "";
  });
  // Back to this page from the next one (the browser's page cache): the button works again.
  window.addEventListener("pageshow", function () {
    button.disabled = false;
    button.textContent = "Import";
  });
  form.addEventListener("submit", function (event) {
    var file = field.files && field.files[0];
    if (file && limit && file.size > limit) {
      event.preventDefault();
      note.textContent = file.name + " is " + mib(file.size) + ": the dashboard takes at most " +
        mib(limit) + " (CRMSYNC_MAX_BODY_BYTES). Split it, or run crmsync import FILE. " +
        "Nothing was imported.";
      note.hidden = false;
      return;
    }
    button.disabled = true;
    button.textContent = "Importing\u2026";
  });
})();
