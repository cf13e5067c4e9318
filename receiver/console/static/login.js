"use strict";
// Shows the refusal note after a failed sign-in (the page is static: no inline script is allowed).
if (new URLSearchParams(location.search).has("failed")) {
  document.getElementById("login-failed").hidden = false;
}
