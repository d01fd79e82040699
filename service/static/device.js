// The device confirmation page of tokengate (docs/device-login.md).
//
// It runs on the account page's cookies and routes: /account/login to log
// in, /account/refresh when the access cookie expired, and the page's own
// /account/device/{lookup,approve,deny}, each with the X-CSRF-Token header
// equal to the account_csrf cookie. Those need a fresh password login; a
// 401 fresh_login_required asks for the password again and retries.
"use strict";

(() => {
  const PAGE = document.body.dataset.page || "/account";
  const DEVICE = document.body.dataset.devicePage || `${PAGE}/device`;
  const CSRF_COOKIE = "account_csrf";
  const VIEWS = ["login", "reauth", "code", "confirm", "done"];
  const $ = (id) => document.getElementById(id);

  let me = null; // {id, username, session_id} once known
  let shown = null; // the request on screen
  let retry = null; // what to do again after a fresh login

  class Refused extends Error {
    constructor(status, code, description, retryAfter) {
      super(description || `The server answered ${status}.`);
      this.status = status;
      this.code = code;
      this.retryAfter = retryAfter;
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

  function say(text, kind) {
    $("message").textContent = text || "";
    $("message").className = kind || "";
  }

  function show(view) {
    for (const name of VIEWS) $(name).hidden = name !== view;
  }

  async function send(method, path, body, again = true) {
    const headers = { Accept: "application/json", "X-CSRF-Token": readCookie(CSRF_COOKIE) };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (r.ok) return r.status === 204 ? null : r.json();
    let code = "";
    let description = "";
    try {
      const data = await r.json();
      code = data.error || "";
      description = data.error_description || "";
    } catch {
      // not JSON: the status says enough
    }
    if (again && r.status === 401 && code === "token_expired") {
      const refreshed = await fetch(`${PAGE}/refresh`, {
        method: "POST",
        credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRF-Token": readCookie(CSRF_COOKIE) },
      });
      if (refreshed.ok) return send(method, path, body, false);
      throw new Refused(401, "missing_token", "");
    }
    throw new Refused(r.status, code, description, r.headers.get("Retry-After"));
  }

  function deviceName() {
    const ua = navigator.userAgent;
    const browser = /Edg\//.test(ua) ? "Edge"
      : /Firefox\//.test(ua) ? "Firefox"
      : /Chrom(e|ium)\//.test(ua) ? "Chrome"
      : /Safari\//.test(ua) ? "Safari"
      : "Browser";
    return `${browser} (device confirmation)`;
  }

  async function pageLogin(username, password) {
    const r = await fetch(`${PAGE}/login`, {
      method: "POST",
      credentials: "same-origin",
      headers: { Accept: "application/json", "Content-Type": "application/json" },
      body: JSON.stringify({ username, password, device: deviceName() }),
    });
    if (r.ok) return r.json();
    let code = "";
    try {
      code = (await r.json()).error || "";
    } catch {
      // ignore
    }
    if (code === "invalid_credentials") say("Wrong username or password.", "error");
    else if (code === "too_many_attempts") {
      say(`Too many attempts; try again in ${r.headers.get("Retry-After")} s.`, "error");
    } else say(`The server answered ${r.status}. Try again in a moment.`, "error");
    return null;
  }

  async function guarded(action) {
    try {
      await action();
    } catch (err) {
      if (!(err instanceof Refused)) {
        say("The server could not be reached. Try again in a moment.", "error");
      } else if (err.status === 401 && err.code === "fresh_login_required") {
        retry = action;
        $("reauth-who").textContent = me ? me.username : "";
        show("reauth");
        say("", "");
        $("reauth-password").focus();
      } else if (err.status === 401) {
        retry = action;
        show("login");
        say("Log in to confirm the device.", "");
        $("username").focus();
      } else if (err.status === 429) {
        say(`Too many wrong codes; try again in ${err.retryAfter} s.`, "error");
      } else if (err.status === 404) {
        show("code");
        say(err.message, "error");
        $("user-code").focus();
      } else {
        say(err.message, "error");
      }
    }
  }

  function fill(request) {
    shown = request;
    $("req-code").textContent = request.user_code;
    $("req-device").textContent = request.device || "(no name given)";
    $("req-ip").textContent = request.ip || "(unknown)";
    $("req-agent").textContent = request.user_agent || "(none)";
    const asked = new Date(request.requested_at);
    const minutes = Math.round((Date.now() - asked.getTime()) / 60000);
    const ago = minutes < 1 ? "just now" : new Intl.RelativeTimeFormat(undefined, { numeric: "auto" })
      .format(-minutes, "minute");
    $("req-when").textContent = `${asked.toLocaleString()} (${ago})`;
    $("req-when").title = request.requested_at;
    const grants = request.grants.length ? request.grants.join(" ") : "none";
    $("req-scopes").textContent = request.scopes.length
      ? `asked for ${request.scopes.join(" ")}; like any session of yours it gets all of yours: ${grants}`
      : `all of yours: ${grants}`;
    $("confirm-who").textContent = me ? me.username : "";
  }

  async function whoAmI() {
    me = await send("GET", `${PAGE}/me`);
  }

  async function lookup() {
    if (me === null) await whoAmI();
    const request = await send("POST", `${DEVICE}/lookup`, { user_code: $("user-code").value });
    fill(request);
    say("", "");
    show("confirm");
    $("approve").focus();
  }

  async function decide(approve) {
    const result = await send("POST", `${DEVICE}/${approve ? "approve" : "deny"}`, {
      user_code: shown.user_code,
    });
    say("", "");
    if (result.status === "approved") {
      $("done-title").textContent = "Device approved";
      $("done-text").textContent = `The device "${result.device || "(no name)"}" may now log in as ${me.username}; `
        + "its session is listed among yours as a device login, and you can end it there.";
    } else {
      $("done-title").textContent = "Device denied";
      $("done-text").textContent = "The device was refused; it gets no access to your account.";
    }
    document.body.dataset.outcome = result.status;
    show("done");
  }

  async function login(event) {
    event.preventDefault();
    const who = await pageLogin($("username").value, $("password").value);
    if (who === null) return;
    $("password").value = "";
    me = { username: who.username, session_id: who.session_id };
    say("", "");
    await next();
  }

  async function reauth(event) {
    event.preventDefault();
    const previous = me;
    const who = await pageLogin(previous.username, $("reauth-password").value);
    if (who === null) return;
    $("reauth-password").value = "";
    // The new login is a new session: the stale one it replaces ends here.
    await send("DELETE", `${PAGE}/sessions/${encodeURIComponent(previous.session_id)}`).catch(() => {});
    me = { username: who.username, session_id: who.session_id };
    say("", "");
    await next();
  }

  async function next() {
    const action = retry;
    retry = null;
    if (action !== null) return guarded(action);
    if ($("user-code").value) return guarded(lookup);
    show("code");
    $("user-code").focus();
  }

  $("login-form").addEventListener("submit", (event) => guarded(() => login(event)));
  $("reauth-form").addEventListener("submit", (event) => guarded(() => reauth(event)));
  $("code-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(lookup);
  });
  $("approve").addEventListener("click", () => guarded(() => decide(true)));
  $("deny").addEventListener("click", () => guarded(() => decide(false)));

  // No CSRF cookie means no page session: ask for the login without a 401 in the console.
  if (!readCookie(CSRF_COOKIE)) {
    show("login");
    $("username").focus();
  } else {
    guarded(async () => {
      await whoAmI();
      await next();
    });
  }
})();
