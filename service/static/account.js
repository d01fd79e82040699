// The account page of tokengate (docs/browser.md).
//
// Cookie mode: the access and refresh tokens live in HttpOnly cookies this
// script never sees; it reads only the csrf_token cookie and echoes it in
// X-CSRF-Token on every unsafe request. Like an axios interceptor, a request
// answered 401 token_expired triggers POST /auth/refresh and is retried once;
// concurrent requests share a single refresh.
"use strict";

(() => {
  const AUTH = document.body.dataset.authPrefix || "/auth";
  const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);
  const POLL_MS = 30000;
  const REASONS = {
    token_revoked: "This session was ended. Log in again to continue.",
    session_expired: "Your session expired. Log in again to continue.",
    session_replaced: "A newer login ended this session. Log in again to continue.",
    refresh_reused: "This session was ended for safety. Log in again to continue.",
    invalid_token: "Please log in again.",
    missing_token: "",
  };

  const $ = (id) => document.getElementById(id);

  class LoginRequired extends Error {
    constructor(code) {
      super(code);
      this.code = code;
    }
  }

  class ApiError extends Error {
    constructor(status, code, description) {
      super(description || `The server answered ${status}.`);
      this.status = status;
      this.code = code;
    }
  }

  function readCookie(name) {
    for (const part of document.cookie.split(";")) {
      const eq = part.indexOf("=");
      if (eq > 0 && part.slice(0, eq).trim() === name) {
        return decodeURIComponent(part.slice(eq + 1).trim());
      }
    }
    return "";
  }

  async function errorOf(response) {
    try {
      const body = await response.clone().json();
      return { code: body.error || "", description: body.error_description || "" };
    } catch {
      return { code: "", description: "" };
    }
  }

  // -- the interceptor ----------------------------------------------------

  let generation = 0; // how many refreshes have completed
  let refreshing = null; // the refresh in flight, shared by every caller

  function refreshOnce() {
    if (refreshing === null) {
      refreshing = (async () => {
        try {
          const r = await fetch(`${AUTH}/refresh`, {
            method: "POST",
            credentials: "same-origin",
            headers: { Accept: "application/json", "X-CSRF-Token": readCookie("csrf_token") },
          });
          if (r.ok) {
            generation += 1;
            return;
          }
          const { code, description } = await errorOf(r);
          if (r.status === 401 || r.status === 403) throw new LoginRequired(code);
          throw new ApiError(r.status, code, description);
        } finally {
          refreshing = null;
        }
      })();
    }
    return refreshing;
  }

  async function api(method, path, body) {
    for (let attempt = 0; ; attempt += 1) {
      if (refreshing !== null) {
        // Sending now would race the new cookies; the outcome is the server's to tell.
        await refreshing.catch(() => {});
      }
      const sentGeneration = generation;
      const csrf = readCookie("csrf_token");
      const headers = { Accept: "application/json" };
      if (UNSAFE.has(method)) headers["X-CSRF-Token"] = csrf;
      if (body !== undefined) headers["Content-Type"] = "application/json";
      const r = await fetch(path, {
        method,
        headers,
        credentials: "same-origin",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      if (r.ok) return r;
      const { code, description } = await errorOf(r);
      if (attempt === 0 && r.status === 401 && code === "token_expired") {
        // Sent before a refresh that has finished since: just retry.
        if (generation === sentGeneration) await refreshOnce();
        continue;
      }
      if (attempt === 0 && code === "csrf_failed" && readCookie("csrf_token") !== csrf) {
        continue; // a refresh rotated the CSRF cookie while this was in flight
      }
      if (r.status === 401) throw new LoginRequired(code);
      throw new ApiError(r.status, code, description);
    }
  }

  // -- the page -----------------------------------------------------------

  let pollTimer = null;

  function say(text, kind) {
    const message = $("message");
    message.textContent = text || "";
    message.className = kind || "";
  }

  function show(view) {
    $("login").hidden = view !== "login";
    $("account").hidden = view !== "account";
  }

  function loggedOut(reason) {
    window.clearInterval(pollTimer);
    pollTimer = null;
    $("whoami").textContent = "";
    $("sessions").tBodies[0].replaceChildren();
    show("login");
    say(reason, "");
    $("username").focus();
  }

  async function guarded(action) {
    try {
      await action();
    } catch (err) {
      if (err instanceof LoginRequired) {
        loggedOut(REASONS[err.code] ?? REASONS.invalid_token);
      } else if (err instanceof ApiError) {
        say(err.message, "error");
      } else {
        say("The server could not be reached. Try again in a moment.", "error");
      }
    }
  }

  function ago(date) {
    const seconds = Math.round((Date.now() - date.getTime()) / 1000);
    const format = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
    if (seconds < 45) return "just now";
    if (seconds < 3600) return format.format(-Math.round(seconds / 60), "minute");
    if (seconds < 86400) return format.format(-Math.round(seconds / 3600), "hour");
    return format.format(-Math.round(seconds / 86400), "day");
  }

  function timeCell(iso, relative) {
    const cell = document.createElement("td");
    const date = new Date(iso);
    const time = document.createElement("time");
    time.dateTime = iso;
    time.title = date.toLocaleString();
    time.textContent = relative ? ago(date) : date.toLocaleString();
    cell.append(time);
    return cell;
  }

  function deviceLabel(session) {
    if (session.device) return session.device;
    if (session.user_agent) return session.user_agent.slice(0, 60);
    return "Unknown device";
  }

  function sessionRow(session) {
    const row = document.createElement("tr");
    row.dataset.sessionId = session.id;
    if (session.current) row.classList.add("is-current");

    const device = document.createElement("td");
    device.append(deviceLabel(session));
    if (session.current) {
      const badge = document.createElement("span");
      badge.className = "current";
      badge.textContent = "this device";
      device.append(badge);
    }
    if (session.device && session.user_agent) {
      const agent = document.createElement("small");
      agent.textContent = session.user_agent.slice(0, 120);
      device.append(document.createElement("br"), agent);
    }
    const address = document.createElement("td");
    address.textContent = session.ip || "";

    const action = document.createElement("td");
    const button = document.createElement("button");
    button.type = "button";
    if (session.current) {
      button.className = "logout-here";
      button.textContent = "Log out";
      button.addEventListener("click", () => guarded(logout));
    } else {
      button.className = "end-session";
      button.textContent = "End";
      button.addEventListener("click", () => guarded(() => endSession(session.id)));
    }
    action.append(button);

    row.append(device, address, timeCell(session.last_seen_at, true));
    row.append(timeCell(session.created_at, false), action);
    return row;
  }

  async function load() {
    const [me, list] = await Promise.all([
      api("GET", `${AUTH}/me`).then((r) => r.json()),
      api("GET", `${AUTH}/sessions`).then((r) => r.json()),
    ]);
    $("whoami").textContent = me.username;
    $("whoami").dataset.userId = String(me.id);
    $("sessions").tBodies[0].replaceChildren(...list.sessions.map(sessionRow));
    show("account");
    // A count of completed loads, for anything that watches the page (the tests do).
    document.body.dataset.loads = String(Number(document.body.dataset.loads || 0) + 1);
    if (pollTimer === null) {
      pollTimer = window.setInterval(() => guarded(load), POLL_MS);
    }
  }

  async function endSession(id) {
    await api("DELETE", `${AUTH}/sessions/${encodeURIComponent(id)}`);
    say("The session was ended.", "");
    await load();
  }

  async function logout() {
    await api("POST", `${AUTH}/logout`);
    loggedOut("You have logged out.");
  }

  async function logoutAll() {
    await api("POST", `${AUTH}/logout-all`);
    loggedOut("Every session was ended, this one too.");
  }

  function deviceName() {
    const ua = navigator.userAgent;
    const browser = /Edg\//.test(ua) ? "Edge"
      : /Firefox\//.test(ua) ? "Firefox"
      : /Chrom(e|ium)\//.test(ua) ? "Chrome"
      : /Safari\//.test(ua) ? "Safari"
      : "Browser";
    const os = /Android/.test(ua) ? "Android"
      : /iPhone|iPad/.test(ua) ? "iOS"
      : /Windows/.test(ua) ? "Windows"
      : /Mac OS X/.test(ua) ? "macOS"
      : /Linux/.test(ua) ? "Linux"
      : "";
    return os ? `${browser} on ${os}` : browser;
  }

  async function login(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const r = await fetch(`${AUTH}/login`, {
        method: "POST",
        credentials: "same-origin",
        headers: { Accept: "application/json", "Content-Type": "application/json" },
        body: JSON.stringify({
          username: $("username").value,
          password: $("password").value,
          device: deviceName(),
        }),
      });
      if (!r.ok) {
        const { code, description } = await errorOf(r);
        if (code === "invalid_credentials") say("Wrong username or password.", "error");
        else if (code === "too_many_attempts") {
          say(`Too many attempts; try again in ${r.headers.get("Retry-After")} s.`, "error");
        } else say(description || `The server answered ${r.status}.`, "error");
        return;
      }
      // The body repeats the tokens for API clients; the page keeps none of
      // them: the cookies the response set are what it runs on.
      await r.body?.cancel();
      $("password").value = "";
      generation += 1;
      say("", "");
      await load();
    } finally {
      button.disabled = false;
    }
  }

  $("login-form").addEventListener("submit", (event) => guarded(() => login(event)));
  $("logout").addEventListener("click", () => guarded(logout));
  $("logout-all").addEventListener("click", () => guarded(logoutAll));
  $("reload").addEventListener("click", () => guarded(load));
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && pollTimer !== null) guarded(load);
  });

  guarded(load);
})();
