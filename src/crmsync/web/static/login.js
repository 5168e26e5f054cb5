// Signs in at once from /login#token=<jwt>: the token is read from the fragment (which the
// browser never sends to the server), removed from the address bar and history, and posted.
"use strict";

(function () {
  var form = document.getElementById("login-form");
  var field = document.getElementById("token");
  if (!form || !field) {
    return;
  }
  var fragment = new URLSearchParams(window.location.hash.slice(1));
  var token = fragment.get("token");
  if (!token) {
    field.focus();
    return;
  }
  history.replaceState(null, "", window.location.pathname + window.location.search);
  if (document.getElementById("login-error")) {
    return; // this very token was just refused: show why instead of trying again
  }
  field.value = token;
  form.submit();
})();
