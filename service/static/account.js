// The account page of tokengate (docs/browser.md).
//
// The page runs on its own routes under /account/, on cookies scoped to
// that path, whatever TOKENGATE_TOKEN_LOCATION says for API clients. The
// access and refresh tokens live in HttpOnly cookies this script never sees;
// it reads only the account_csrf cookie and echoes it in X-CSRF-Token on
// every unsafe request. Like an axios interceptor, a request answered
// 401 token_expired triggers POST /account/refresh and is retried once;
// concurrent requests share a single refresh. 401 fresh_login_required asks
// for the password again, then retries what was asked.
"use strict";

(() => {
  const PAGE = document.body.dataset.page || "/account";
  const AUTH = document.body.dataset.authPrefix || "/auth";
  const REGISTRATION = document.body.dataset.registration === "on";
  const CSRF_COOKIE = "account_csrf";
  const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);
  const POLL_MS = 30000;
  const VIEWS = ["login", "register", "forgot", "reauth", "account"];
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

  class FreshLoginRequired extends Error {}

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
          const r = await fetch(`${PAGE}/refresh`, {
            method: "POST",
            credentials: "same-origin",
            headers: { Accept: "application/json", "X-CSRF-Token": readCookie(CSRF_COOKIE) },
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
      const csrf = readCookie(CSRF_COOKIE);
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
      if (attempt === 0 && code === "csrf_failed" && readCookie(CSRF_COOKIE) !== csrf) {
        continue; // a refresh rotated the CSRF cookie while this was in flight
      }
      if (r.status === 401 && code === "fresh_login_required") throw new FreshLoginRequired();
      if (r.status === 401 && code !== "invalid_credentials") throw new LoginRequired(code);
      throw new ApiError(r.status, code, description);
    }
  }

  // A JSON call that needs no cookie (register, password reset).
  async function post(path, body) {
    const r = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { Accept: "application/json", "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (r.ok) return r;
    const { code, description } = await errorOf(r);
    throw new ApiError(r.status, code, description);
  }

  // -- the page -----------------------------------------------------------

  let pollTimer = null;
  let me = null; // {id, username, session_id} once loaded
  let pending = null; // the action that asked for a fresh login
  // Counts log-outs: the answers to a load sent before one show nothing and say nothing.
  let logouts = 0;

  function say(text, kind) {
    const message = $("message");
    message.textContent = text || "";
    message.className = kind || "";
  }

  function show(view) {
    for (const name of VIEWS) $(name).hidden = name !== view;
    $("confirm-all").hidden = true;
  }

  function loggedOut(reason) {
    logouts += 1;
    window.clearInterval(pollTimer);
    pollTimer = null;
    me = null;
    $("whoami").textContent = "";
    $("sessions").tBodies[0].replaceChildren();
    $("api-keys").tBodies[0].replaceChildren();
    $("new-key-value").textContent = "";
    $("new-key").hidden = true;
    show("login");
    say(reason, "");
    $("username").focus();
  }

  async function guarded(action) {
    try {
      await action();
    } catch (err) {
      if (err instanceof FreshLoginRequired) {
        askFreshLogin(action);
      } else if (err instanceof LoginRequired) {
        loggedOut(REASONS[err.code] ?? REASONS.invalid_token);
      } else if (err instanceof ApiError) {
        say(err.message, "error");
      } else {
        say("The server could not be reached. Try again in a moment.", "error");
      }
    }
  }

  // What the user starts (a click, a form): the last action's message goes,
  // so that no message outlives the action it was about. A poll in the
  // background is no action and leaves the message alone.
  function act(action) {
    say("", "");
    return guarded(action);
  }

  // The view's address (#register, #login, #forgot) once it is left for the
  // account: a reload shows the account, not the form that led to it.
  function forgetView() {
    if (window.location.hash) history.replaceState(null, "", PAGE + window.location.search);
  }

  function ago(date) {
    const seconds = Math.round((Date.now() - date.getTime()) / 1000);
    const format = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
    if (seconds < 45) return "just now";
    if (seconds < 3600) return format.format(-Math.round(seconds / 60), "minute");
    if (seconds < 86400) return format.format(-Math.round(seconds / 3600), "hour");
    return format.format(-Math.round(seconds / 86400), "day");
  }

  function timeCell(iso, relative, label) {
    const cell = document.createElement("td");
    cell.dataset.label = label;
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
    device.dataset.label = "Device";
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
    address.dataset.label = "Address";
    address.textContent = session.ip || "";

    const action = document.createElement("td");
    action.className = "action";
    const button = document.createElement("button");
    button.type = "button";
    if (session.current) {
      button.className = "logout-here";
      button.textContent = "Log out";
      button.addEventListener("click", () => act(logout));
    } else {
      button.className = "end-session";
      button.textContent = "End";
      button.addEventListener("click", () => act(() => endSession(session.id)));
    }
    action.append(button);

    row.append(device, address, timeCell(session.last_seen_at, true, "Last seen"));
    row.append(timeCell(session.created_at, false, "Started"), action);
    return row;
  }

  // -- API keys -----------------------------------------------------------

  function keyState(key) {
    if (key.revoked_why === "leaked") return "revoked: reported leaked";
    if (key.revoked_at) return "revoked";
    if (new Date(key.expires_at).getTime() <= Date.now()) return "expired";
    return "live";
  }

  function keyRow(key) {
    const row = document.createElement("tr");
    row.dataset.keyId = key.id;
    const cell = (label, text) => {
      const td = document.createElement("td");
      td.dataset.label = label;
      td.textContent = text;
      return td;
    };
    const state = keyState(key);
    const used = key.last_used_at
      ? timeCell(key.last_used_at, true, "Last used")
      : cell("Last used", "never");
    if (key.last_used_ip) used.append(document.createElement("br"), key.last_used_ip);
    const stateCell = cell("State", state);
    stateCell.className = `key-state ${state === "live" ? "" : "is-over"}`;
    const action = document.createElement("td");
    action.className = "action";
    if (state === "live") {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "revoke-key";
      button.textContent = "Revoke";
      button.addEventListener("click", () => act(() => revokeKey(key.id)));
      action.append(button);
    }
    row.append(cell("Name", key.name), cell("Scopes", key.scopes.join(" ") || "none"), used);
    row.append(timeCell(key.expires_at, false, "Expires"), stateCell, action);
    return row;
  }

  function showKeys(listing) {
    $("api-keys-section").hidden = listing === null;
    if (listing === null) return;
    $("api-keys").tBodies[0].replaceChildren(...listing.api_keys.map(keyRow));
    const box = $("api-key-scopes");
    const chosen = new Set(
      [...box.querySelectorAll("input:checked")].map((input) => input.value),
    );
    box.querySelectorAll("label").forEach((label) => label.remove());
    for (const scope of listing.scopes) {
      const label = document.createElement("label");
      label.className = "scope";
      const input = document.createElement("input");
      input.type = "checkbox";
      input.value = scope;
      input.checked = chosen.has(scope);
      label.append(input, ` ${scope}`);
      box.append(label);
    }
    $("api-key-no-scopes").hidden = listing.scopes.length > 0;
  }

  async function loadKeys() {
    // 404: API keys are turned off on this server; the section stays hidden.
    const r = await api("GET", `${PAGE}/api-keys`).catch((err) => {
      if (err instanceof ApiError && err.status === 404) return null;
      throw err;
    });
    return r === null ? null : r.json();
  }

  async function revokeKey(id) {
    await api("DELETE", `${PAGE}/api-keys/${encodeURIComponent(id)}`);
    say("The key was revoked.", "");
    await load();
  }

  function makeKey(event) {
    event.preventDefault();
    const body = {
      name: $("api-key-name").value,
      scopes: [...$("api-key-scopes").querySelectorAll("input:checked")].map((i) => i.value),
      expires_in: Number($("api-key-lifetime").value),
    };
    const action = async () => {
      const made = await (await api("POST", `${PAGE}/api-keys`, body)).json();
      $("api-key-form").reset();
      $("make-api-key").open = false;
      $("new-key-value").textContent = made.key;
      $("new-key").hidden = false;
      say("", "");
      await load();
    };
    return act(action);
  }

  function dropStale() {
    // A count of loads dropped as stale, for anything that watches the page (the tests do).
    document.body.dataset.staleLoads = String(Number(document.body.dataset.staleLoads || 0) + 1);
  }

  async function load() {
    const sentAfter = logouts;
    let answers;
    try {
      answers = await Promise.all([
        api("GET", `${PAGE}/me`).then((r) => r.json()),
        api("GET", `${PAGE}/sessions`).then((r) => r.json()),
        loadKeys(),
      ]);
    } catch (err) {
      if (logouts !== sentAfter) return dropStale(); // refused after a log-out: said already
      throw err;
    }
    // A load sent before a log-out and answered after it (a Refresh, a poll) would
    // show the account again, and poll again, on the login form.
    if (logouts !== sentAfter) return dropStale();
    const [who, list, keys] = answers;
    showKeys(keys);
    me = who;
    $("whoami").textContent = who.username;
    $("whoami").dataset.userId = String(who.id);
    $("sessions").tBodies[0].replaceChildren(...list.sessions.map(sessionRow));
    if ($("account").hidden) {
      show("account");
      forgetView();
    }
    // A count of completed loads, for anything that watches the page (the tests do).
    document.body.dataset.loads = String(Number(document.body.dataset.loads || 0) + 1);
    if (pollTimer === null) {
      pollTimer = window.setInterval(() => guarded(load), POLL_MS);
    }
  }

  async function endSession(id) {
    await api("DELETE", `${PAGE}/sessions/${encodeURIComponent(id)}`);
    say("The session was ended.", "");
    await load();
  }

  async function logout() {
    await api("POST", `${PAGE}/logout`);
    loggedOut("You have logged out.");
  }

  async function logoutAll() {
    await api("POST", `${PAGE}/logout-all`);
    loggedOut("Every session was ended, this one too.");
  }

  async function changePassword(event) {
    event.preventDefault();
    const current = $("current-password").value;
    const next = $("next-password").value;
    const action = async () => {
      await api("POST", `${PAGE}/password`, { current_password: current, new_password: next });
      $("password-form").reset();
      $("change-password").open = false;
      say("Your password was changed; your other sessions were ended.", "");
      await load();
    };
    await guarded(action);
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

  // Log in on the page's own route: the response sets the page's cookies and
  // carries no token. Returns false (with a message shown) when refused.
  async function pageLogin(username, password) {
    const r = await fetch(`${PAGE}/login`, {
      method: "POST",
      credentials: "same-origin",
      headers: { Accept: "application/json", "Content-Type": "application/json" },
      body: JSON.stringify({ username, password, device: deviceName() }),
    });
    if (!r.ok) {
      const { code, description } = await errorOf(r);
      if (code === "invalid_credentials") say("Wrong username or password.", "error");
      else if (code === "too_many_attempts") {
        say(`Too many attempts; try again in ${r.headers.get("Retry-After")} s.`, "error");
      } else say(description || `The server answered ${r.status}.`, "error");
      return false;
    }
    // Read to its end, small as it is: a body left unread and cancelled would
    // show as a cancelled request in the browser's network log.
    await r.arrayBuffer();
    generation += 1;
    return true;
  }

  async function busy(form, work) {
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await work();
    } finally {
      button.disabled = false;
    }
  }

  async function login(event) {
    event.preventDefault();
    await busy(event.currentTarget, async () => {
      if (await pageLogin($("username").value, $("password").value)) {
        $("password").value = "";
        say("", "");
        await load();
      }
    });
  }

  async function register(event) {
    event.preventDefault();
    const username = $("new-username").value;
    const password = $("new-password").value;
    await busy(event.currentTarget, async () => {
      try {
        await post(`${AUTH}/register`, { username, password });
      } catch (err) {
        if (err instanceof ApiError && err.code === "username_taken") {
          say("That username is taken; choose another.", "error");
          return;
        }
        throw err;
      }
      $("register-form").reset();
      if (await pageLogin(username, password)) {
        say("Your account was created.", "");
        await load();
      }
    });
  }

  async function forgot(event) {
    event.preventDefault();
    await busy(event.currentTarget, async () => {
      await post(`${AUTH}/password-reset/request`, { username: $("forgot-username").value });
      say("If that account exists, a reset code is on its way. Enter it below.", "");
      $("reset-token").focus();
    });
  }

  async function reset(event) {
    event.preventDefault();
    await busy(event.currentTarget, async () => {
      try {
        await post(`${AUTH}/password-reset/confirm`, {
          token: $("reset-token").value.trim(),
          new_password: $("reset-password").value,
        });
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) {
          say("That reset code is wrong, used or expired; ask for a new one.", "error");
          return;
        }
        throw err;
      }
      $("reset-form").reset();
      history.replaceState(null, "", PAGE);
      show("login");
      say("Your password was changed and every session ended. Log in with the new one.", "");
    });
  }

  // -- a fresh login for an action that needs one -------------------------

  function askFreshLogin(action) {
    pending = action;
    show("reauth");
    say("", "");
    $("reauth-password").focus();
  }

  async function reauth(event) {
    event.preventDefault();
    const action = pending;
    const previous = me;
    await busy(event.currentTarget, async () => {
      if (previous === null || !(await pageLogin(previous.username, $("reauth-password").value))) {
        return;
      }
      $("reauth-password").value = "";
      pending = null;
      // The new login is a new session: the one it replaces ends here.
      await api("DELETE", `${PAGE}/sessions/${encodeURIComponent(previous.session_id)}`)
        .catch(() => {});
      say("", "");
      show("account");
      if (action !== null) await action();
      else await load();
    });
  }

  function cancelReauth() {
    pending = null;
    show(me === null ? "login" : "account");
  }

  // -- navigation -----------------------------------------------------------

  function route() {
    const hash = window.location.hash;
    if (hash.startsWith("#reset=")) {
      // A link from the reset message: the code rides in the fragment, which
      // the browser never sends to a server.
      show("forgot");
      $("reset-token").value = decodeURIComponent(hash.slice("#reset=".length));
      $("reset-password").focus();
      return true;
    }
    if (hash === "#register" && REGISTRATION) {
      show("register");
      say("", "");
      $("new-username").focus();
      return true;
    }
    if (hash === "#forgot") {
      show("forgot");
      say("", "");
      $("forgot-username").focus();
      return true;
    }
    if (hash === "#login") {
      show("login");
      say("", "");
      return true;
    }
    return false;
  }

  if (!REGISTRATION) {
    for (const element of document.querySelectorAll("[data-registration-only]")) element.remove();
  }
  $("login-form").addEventListener("submit", (event) => act(() => login(event)));
  $("register-form").addEventListener("submit", (event) => act(() => register(event)));
  $("forgot-form").addEventListener("submit", (event) => act(() => forgot(event)));
  $("reset-form").addEventListener("submit", (event) => act(() => reset(event)));
  $("reauth-form").addEventListener("submit", (event) => act(() => reauth(event)));
  $("reauth-cancel").addEventListener("click", () => {
    say("", "");
    cancelReauth();
  });
  $("password-form").addEventListener("submit", (event) => {
    say("", "");
    changePassword(event);
  });
  $("logout").addEventListener("click", () => act(logout));
  $("logout-all").addEventListener("click", () => {
    say("", "");
    $("confirm-all").hidden = false;
    $("confirm-all-no").focus();
  });
  $("confirm-all-yes").addEventListener("click", () => act(logoutAll));
  $("confirm-all-no").addEventListener("click", () => {
    $("confirm-all").hidden = true;
  });
  $("reload").addEventListener("click", () => act(load));
  $("api-key-form").addEventListener("submit", makeKey);
  $("new-key-done").addEventListener("click", () => {
    $("new-key-value").textContent = "";
    $("new-key").hidden = true;
  });
  window.addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && pollTimer !== null) guarded(load);
  });

  // No CSRF cookie means no page session: show the form without asking the
  // server (and without a 401 in the console).
  if (!route()) {
    if (readCookie(CSRF_COOKIE)) guarded(load);
    else loggedOut("");
  }
})();
