// Sign-in: the token goes in the POST body only; the server answers with HttpOnly cookies.
// "Sign in with …" is a plain link to /api/v1/session/oidc/start (the provider's flow).
import { $ } from "./common.js";

const form = $("#sign-in-form");
const error = $("#sign-in-error");

// Back from the provider, signed in: move on with a same-site navigation, which sends
// the SameSite=Strict session cookie that the provider's redirect chain could not.
const done = $("#sso-done");
if (done) window.location.replace(done.dataset.next || "/tasks");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.hidden = true;
  const button = form.querySelector("button[type=submit]");
  button.setAttribute("aria-busy", "true");
  try {
    const response = await fetch("/api/v1/session", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ token: $("#token").value.trim() }),
      credentials: "same-origin",
    });
    if (!response.ok) {
      let detail = "Signing in failed.";
      try { detail = (await response.json()).detail || detail; } catch { /* not JSON */ }
      throw new Error(response.status === 401 ? "That token is not valid." : detail);
    }
    window.location.assign(form.dataset.next || "/tasks");
  } catch (e) {
    error.textContent = e.message;
    error.hidden = false;
    $("#token").focus();
  } finally {
    button.removeAttribute("aria-busy");
  }
});
