// Sign-in: the token goes in the POST body only; the server answers with HttpOnly cookies.
import { $ } from "./common.js";

const form = $("#sign-in-form");
const error = $("#sign-in-error");

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
