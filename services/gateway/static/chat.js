// durachat web client. Speaks the workers-chat-demo wire protocol (plus extension keys).
// Plain script, no build step, no external resources.
// User-provided text is rendered with textContent, never as markup. The one exception is
// the "html" key of a finished AI message: HTML the server rendered from markdown and
// sanitized (markdown-it-py + nh3, services/gateway/markdown.py).
"use strict";

(function () {
  const MAX_NAME = 32;
  const MAX_ROOM = 32;
  const MAX_MESSAGE = 256;
  const COUNTER_FROM = MAX_MESSAGE - 56; // the counter shows from here on
  const PRIVATE_ID = /^[0-9a-f]{64}$/;
  const RESERVED = new Set(["ai", "system"]); // the server checks look-alikes too
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 10000;
  const PROBE_MS = 1000; // while waiting to reconnect, /healthz is asked this often
  const CLOSE_POLICY = 1008; // the server refuses for good (no such room, ...)
  const CLOSE_TOO_BIG = 1009; // the server closes with this when the name is too long
  const CLOSE_TRY_AGAIN = 1013;
  const NAME_REFUSAL_GRACE_MS = 800;
  const UNANSWERED_MS = 20000; // a frame unanswered this long: the socket is replaced // a room's refusal is followed by a close at once
  const INCOMPLETE = " [incomplete]"; // ends the final text of a failed AI reply
  const RATE_LIMITED = "Your IP is being rate-limited, please try again later.";
  // The chat demo's limiter: one frame per 5 s per IP, after a burst worth 20 s.
  const DEMO_INTERVAL_S = 5;
  const DEMO_GRACE_S = 20;
  const NAME_KEY = "durachat.name";
  const AI_ONLY = /^\s*[@/]ai\s*$/i;

  const $ = (id) => document.getElementById(id);

  const el = {
    whoami: $("whoami"),
    changeName: $("change-name"),
    signIn: $("sign-in"),
    signOut: $("sign-out"),
    signInDialog: $("sign-in-dialog"),
    signInForm: $("sign-in-form"),
    tokenInput: $("token-input"),
    signInError: $("sign-in-error"),
    signInCancel: $("sign-in-cancel"),
    stepName: $("step-name"),
    stepRoom: $("step-room"),
    stepChat: $("step-chat"),
    inviteHint: $("invite-hint"),
    nameForm: $("name-form"),
    nameInput: $("name-input"),
    nameError: $("name-error"),
    roomForm: $("room-form"),
    roomInput: $("room-input"),
    createPrivate: $("create-private"),
    roomError: $("room-error"),
    roomsRefresh: $("rooms-refresh"),
    roomsStatus: $("rooms-status"),
    roomList: $("room-list"),
    roomTitle: $("room-title"),
    status: $("status"),
    retryNow: $("retry-now"),
    leave: $("leave"),
    inviteBox: $("invite-box"),
    inviteLink: $("invite-link"),
    copyInvite: $("copy-invite"),
    copyStatus: $("copy-status"),
    banner: $("banner"),
    bannerText: $("banner-text"),
    bannerActions: $("banner-actions"),
    messages: $("messages"),
    newBelow: $("new-below"),
    roster: $("roster"),
    rosterCount: $("roster-count"),
    chatForm: $("chat-form"),
    messageInput: $("message-input"),
    send: $("send"),
    counter: $("counter"),
    composeError: $("compose-error"),
  };

  const state = {
    name: "",
    user: "", // the identity POST /api/session gave (a guest id, or a signed-in user)
    guest: true,
    sessionError: "",
    room: "",
    ws: null,
    // "idle" | "connecting" | "joining" | "ready" | "waiting" (to reconnect) | "stopped"
    phase: "idle",
    backoff: BACKOFF_MIN_MS,
    reconnectTimer: null,
    reconnectAt: 0, // Date.now() of the next attempt while waiting, else 0
    probeTimer: null,
    sawDown: false, // a /healthz probe failed since the last "ready"
    nameTimer: null, // resends a refused name frame
    nameRefusal: null, // timer: a name refused (unless a close follows: the room refused)
    pendingError: "", // the last error frame before a close: the close's reason
    lastJoined: "",
    serverName: "", // my name as the server normalized it (its "joined" before "ready")
    // Frames sent on the current socket that the server has not answered yet, in order:
    // "name" or an outbox entry. The server answers each in order: the name with "ready"
    // or an error, a message with its echo (its broadcast to us) or an error.
    inflight: [],
    // Messages typed in this room and not yet echoed, in order; per room in `outboxes`.
    outbox: [],
    outboxes: new Map(),
    nextLocalId: 1,
    cooldownUntil: 0, // Date.now() before which no message is sent (after a refusal)
    pumpTimer: null,
    tickTimer: null,
    outboxTick: null,
    // The client's estimate of the demo's limiter for this IP (seconds, performance.now).
    limiterNext: 0,
    // Highest timestamp rendered so far; history replayed after a reconnect is
    // skipped (the server hands out strictly increasing timestamps).
    lastSeenTimestamp: 0,
    lastDay: "",
    stick: true, // the log follows new messages (the reader is at the bottom)
    unreadMarker: null,
    unread: 0,
    byId: new Map(),
    // AI reply bubbles by reply id: { li, who, status, text, time, shown }, where
    // `shown` counts the characters (code points) in `text`, as chunk offsets do.
    ai: new Map(),
  };

  // ---------------------------------------------------------------- helpers

  function chars(text) {
    return Array.from(text).length; // what the server counts (code points)
  }

  function isValidRoom(room) {
    return PRIVATE_ID.test(room) || (room.length > 0 && chars(room) <= MAX_ROOM);
  }

  function decodeHashSafe() {
    const raw = location.hash.slice(1);
    try {
      return decodeURIComponent(raw);
    } catch (_) {
      return raw;
    }
  }

  function roomFromHash() {
    const raw = decodeHashSafe();
    return raw && isValidRoom(raw) ? raw : "";
  }

  function roomLabel(room) {
    return PRIVATE_ID.test(room) ? "Private room" : "#" + room;
  }

  function showStep(step) {
    for (const s of [el.stepName, el.stepRoom, el.stepChat]) s.hidden = s !== step;
    el.changeName.hidden = step === el.stepName || !state.name;
  }

  function errorText(err) {
    return err && err.message ? err.message : String(err);
  }

  // The reason in an HTTP error body, whatever its shape: {"detail": ...} (FastAPI),
  // {"error": {"message": ...}} or {"error": "..."}, or plain text.
  async function httpError(resp) {
    let body = "";
    try {
      body = (await resp.text()).trim();
    } catch (_) {
      /* no body */
    }
    let reason = body;
    try {
      const data = JSON.parse(body);
      if (data && typeof data === "object") {
        const detail = data.detail;
        const error = data.error;
        if (typeof detail === "string") reason = detail;
        else if (Array.isArray(detail) && detail.length && detail[0].msg) reason = String(detail[0].msg);
        else if (error && typeof error === "object" && typeof error.message === "string") reason = error.message;
        else if (typeof error === "string") reason = error;
      }
    } catch (_) {
      /* plain text */
    }
    return new Error(reason || "HTTP " + resp.status);
  }

  function formatTime(ts) {
    const d = new Date(ts);
    if (isNaN(d.getTime())) return "";
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function dayKey(ts) {
    const d = new Date(ts);
    return d.getFullYear() + "-" + (d.getMonth() + 1) + "-" + d.getDate();
  }

  function dayLabel(ts) {
    const d = new Date(ts);
    const today = new Date();
    const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
    if (dayKey(ts) === dayKey(today.getTime())) return "Today";
    if (dayKey(ts) === dayKey(yesterday.getTime())) return "Yesterday";
    const opts = { weekday: "long", day: "numeric", month: "long" };
    if (d.getFullYear() !== today.getFullYear()) opts.year = "numeric";
    return d.toLocaleDateString([], opts);
  }

  function ago(ts) {
    const s = Math.max(0, (Date.now() - ts) / 1000);
    if (s < 60) return "active just now";
    if (s < 3600) return "active " + Math.floor(s / 60) + " min ago";
    if (s < 86400) return "active " + Math.floor(s / 3600) + " h ago";
    return "active " + dayLabel(ts).toLowerCase();
  }

  function plural(n, one, many) {
    return n + " " + (n === 1 ? one : many);
  }

  // ---------------------------------------------------------------- the log

  function isNearBottom() {
    const m = el.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 40;
  }

  function scrollToBottom() {
    el.messages.scrollTop = el.messages.scrollHeight;
    state.stick = true;
    clearUnread();
  }

  function clearUnread() {
    state.unread = 0;
    el.newBelow.hidden = true;
  }

  // The log is [confirmed messages ...][my pending messages ...]: server frames go in
  // before the first pending message, so what I typed stays at the bottom until echoed.
  function firstPending() {
    return el.messages.querySelector(":scope > li.pending");
  }

  function insertLogItem(node, timestamp, counts) {
    const before = firstPending();
    const ts = Number(timestamp);
    if (Number.isFinite(ts) && ts > 0) {
      const key = dayKey(ts);
      if (key !== state.lastDay) {
        state.lastDay = key;
        const day = elem("li", "day");
        day.dataset.day = key;
        day.setAttribute("role", "separator");
        day.textContent = dayLabel(ts);
        el.messages.insertBefore(day, before);
      }
    }
    if (counts && !state.stick) {
      // The reader has scrolled up: mark where the new messages start.
      if (!state.unreadMarker || !state.unreadMarker.isConnected) {
        const marker = elem("li", "unread-marker");
        marker.textContent = "New messages";
        marker.setAttribute("role", "separator");
        el.messages.insertBefore(marker, before);
        state.unreadMarker = marker;
      }
      state.unread += 1;
      el.newBelow.textContent = "New messages ↓ (" + state.unread + ")";
      el.newBelow.hidden = false;
    }
    el.messages.insertBefore(node, before);
    if (state.stick) el.messages.scrollTop = el.messages.scrollHeight;
  }

  function appendPending(node) {
    el.messages.appendChild(node);
    scrollToBottom();
  }

  function keepBottom() {
    if (state.stick) el.messages.scrollTop = el.messages.scrollHeight;
  }

  function elem(tag, className) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    return node;
  }

  function button(label, onClick, className) {
    const b = elem("button", className || "quiet");
    b.type = "button";
    b.textContent = label;
    b.addEventListener("click", onClick);
    return b;
  }

  function buildMessage() {
    const li = elem("li", "message");
    li.append(elem("span", "author"), elem("span", "text"), elem("time", "time"));
    return li;
  }

  function setTime(li, timestamp) {
    const ts = Number(timestamp);
    if (!Number.isFinite(ts)) return;
    const time = li.querySelector(".time");
    li.dataset.timestamp = String(ts);
    time.textContent = formatTime(ts);
    time.dateTime = new Date(ts).toISOString();
    time.title = new Date(ts).toLocaleString();
  }

  function fillMessage(li, data) {
    li.querySelector(".author").textContent = String(data.name);
    li.querySelector(".text").textContent = String(data.message);
    if (window.durachatUploads) window.durachatUploads.render(li, data.attachments);
    setTime(li, data.timestamp);
    li.classList.toggle("mine", data.name === state.name || data.name === state.serverName);
  }

  // Render a chat message. Frames carrying an "id" are upserted: a later frame
  // with the same id updates the existing element in place. Frames without an id
  // are de-duplicated by timestamp.
  function upsertMessage(data) {
    const id = data.id !== undefined && data.id !== null ? String(data.id) : "";
    const ts = Number(data.timestamp);
    const replayed = Number.isFinite(ts) && ts <= state.lastSeenTimestamp;

    if (id && state.byId.has(id)) {
      fillMessage(state.byId.get(id), data);
      keepBottom();
      if (Number.isFinite(ts)) state.lastSeenTimestamp = Math.max(state.lastSeenTimestamp, ts);
      return;
    }
    if (replayed) return; // history replayed after a reconnect
    const echo = matchEcho(data); // my message, taken by the server

    const li = buildMessage();
    if (id) {
      li.dataset.id = id;
      state.byId.set(id, li);
    }
    fillMessage(li, data);
    insertLogItem(li, ts, !echo);
    if (Number.isFinite(ts)) state.lastSeenTimestamp = Math.max(state.lastSeenTimestamp, ts);
    if (echo) scrollToBottom();
  }

  // Skips history replayed after a reconnect; otherwise records the timestamp.
  function isReplayed(timestamp) {
    const ts = Number(timestamp);
    if (!Number.isFinite(ts)) return false;
    if (ts <= state.lastSeenTimestamp) return true;
    state.lastSeenTimestamp = ts;
    return false;
  }

  // A notice from the server ({"kind": "system"}), shown like a local system line.
  function systemNotice(data) {
    if (isReplayed(data.timestamp)) return;
    const li = elem("li", "system notice");
    li.dataset.kind = "system";
    li.textContent = String(data.message);
    insertLogItem(li, data.timestamp, true);
  }

  function systemLine(text, className) {
    const li = elem("li", "system" + (className ? " " + className : ""));
    li.textContent = text;
    insertLogItem(li, NaN, false);
    return li;
  }

  // ---------------------------------------------------------------- AI replies
  // One bubble per reply id. data-ai-state: queued -> streaming -> final | failed.
  // Class ai-final is set once the server's final text is shown (either outcome).

  function buildAiBubble(id, timestamp) {
    const li = elem("li", "ai");
    li.dataset.aiId = id;

    const head = elem("div", "ai-head");
    const who = elem("span", "ai-who");
    const status = elem("span", "ai-status");
    const time = elem("time", "time");
    head.append(who, status, time);

    const text = elem("div", "ai-text");

    li.append(head, text);
    const bubble = { li, who, status, text, time, shown: 0 };
    if (id) state.ai.set(id, bubble);
    insertLogItem(li, timestamp, true);
    return bubble;
  }

  function setAiState(bubble, aiState, statusText) {
    const cl = bubble.li.classList;
    bubble.li.dataset.aiState = aiState;
    cl.toggle("ai-queued", aiState === "queued");
    cl.toggle("ai-streaming", aiState === "streaming");
    cl.toggle("ai-failed", aiState === "failed");
    bubble.status.textContent = statusText;
  }

  function isOpen(bubble) {
    const s = bubble.li.dataset.aiState;
    return s === "queued" || s === "streaming";
  }

  // Appends what lies beyond the text already shown; never leaves a gap.
  function appendAiChunk(bubble, offset, text) {
    if (!Number.isInteger(offset) || offset < 0 || offset > bubble.shown) return;
    const fresh = Array.from(text).slice(bubble.shown - offset);
    if (!fresh.length) return;
    bubble.text.append(fresh.join("")); // a text node, never markup
    bubble.shown += fresh.length;
    keepBottom();
  }

  // {"ai": {"event": "queued" | "started" | "chunk" | "failed", "id": R, ...}}
  function handleAiEvent(ev) {
    if (!ev || typeof ev !== "object" || ev.id === undefined || ev.id === null) return;
    const id = String(ev.id);
    let bubble = state.ai.get(id);
    const asker = typeof ev.asker === "string" ? ev.asker : "";

    if (ev.event === "queued") {
      if (bubble) return;
      bubble = buildAiBubble(id, NaN);
      bubble.who.textContent = asker ? "AI, for " + asker : "AI";
      if (typeof ev.question === "string") bubble.li.title = ev.question;
      setAiState(bubble, "queued", "queued");
    } else if (ev.event === "started") {
      if (bubble && !isOpen(bubble)) return;
      if (!bubble) bubble = buildAiBubble(id, NaN);
      const label = String(ev.label || ev.model || "AI");
      bubble.who.textContent = asker ? label + ", answering " + asker : label;
      setAiState(bubble, "streaming", "typing…");
    } else if (ev.event === "chunk") {
      if (bubble && bubble.li.dataset.aiState === "streaming" && typeof ev.text === "string") {
        appendAiChunk(bubble, ev.offset, ev.text);
      }
    } else if (ev.event === "failed") {
      if (bubble && isOpen(bubble)) {
        setAiState(bubble, "failed", "stopped" + (ev.reason ? " (" + String(ev.reason) + ")" : ""));
      }
    }
  }

  // The final AI message {"name": "AI", "message", "timestamp", "kind": "ai", "id", "html",
  // "asker"}: replaces the streamed text; without a bubble (history) it adds a final one.
  function finishAiMessage(data) {
    const id = data.id !== undefined && data.id !== null ? String(data.id) : "";
    let bubble = id ? state.ai.get(id) : undefined;
    if (bubble) {
      isReplayed(data.timestamp); // only records it
    } else {
      if (isReplayed(data.timestamp)) return;
      bubble = buildAiBubble(id, data.timestamp);
      const asker = typeof data.asker === "string" ? data.asker : "";
      bubble.who.textContent = asker ? String(data.name) + ", answering " + asker : String(data.name);
    }
    const text = String(data.message);
    if (typeof data.html === "string") {
      // Sanitized by the server (markdown-it-py with raw HTML off, then nh3's allow-list).
      bubble.text.innerHTML = data.html;
      bubble.text.classList.add("md");
      for (const a of bubble.text.querySelectorAll("a")) a.target = "_blank";
    } else {
      bubble.text.textContent = text;
    }
    bubble.shown = chars(text);
    if (bubble.li.dataset.aiState === "failed" || text.endsWith(INCOMPLETE)) {
      setAiState(bubble, "failed", bubble.status.textContent || "stopped");
    } else {
      setAiState(bubble, "final", "");
    }
    bubble.li.classList.add("ai-final");
    setTime(bubble.li, data.timestamp);
    keepBottom();
  }

  // ---------------------------------------------------------------- roster

  function rosterAdd(name) {
    if (el.roster.dataset.stale) rosterClear(); // the first "joined" of a new connection
    const li = document.createElement("li");
    li.textContent = name;
    li.dataset.name = name;
    if (name === state.name) li.classList.add("me");
    el.roster.appendChild(li);
    rosterCounted();
  }

  function rosterRemove(name) {
    for (const li of el.roster.children) {
      if (li.dataset.name === name) {
        li.remove();
        break;
      }
    }
    rosterCounted();
  }

  function rosterClear() {
    delete el.roster.dataset.stale;
    el.roster.replaceChildren();
    rosterCounted();
  }

  function rosterCounted() {
    const n = el.roster.children.length;
    el.rosterCount.textContent = n ? "(" + n + ")" : "";
  }

  // ---------------------------------------------------------------- status and banner

  function setStatus(kind, text) {
    el.status.textContent = text;
    el.status.dataset.state = kind;
    el.retryNow.hidden = kind !== "waiting" && kind !== "joining-wait";
  }

  function setComposer(on) {
    el.messageInput.disabled = !on;
    el.send.disabled = !on;
  }

  function showBanner(text, actions) {
    el.bannerText.textContent = text;
    el.bannerActions.replaceChildren(...actions);
    el.banner.hidden = false;
    keepBottom();
  }

  function hideBanner() {
    el.banner.hidden = true;
    el.bannerText.textContent = "";
    el.bannerActions.replaceChildren();
  }

  // ---------------------------------------------------------------- session

  // Who this browser is: POST /api/session keeps (or first issues) its guest identity in an
  // HttpOnly cookie, which the WebSocket sends too, so a reload keeps it. A token (from the
  // sign-in dialog, or once from the page's ?token=) signs in with it: it then lives in the
  // cookie, not in the address bar.
  function openSession(token) {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    return fetch("/api/session", { method: "POST", headers, credentials: "same-origin" })
      .then(async (resp) => {
        if (!resp.ok) throw await httpError(resp);
        const session = await resp.json();
        state.user = session.user_id;
        state.guest = session.guest !== false;
        state.sessionError = "";
        showWho();
        return session;
      })
      .catch((err) => {
        if (token) throw err; // the sign-in dialog says why
        state.sessionError = "* Error: no session (" + errorText(err) + ")";
        return null;
      });
  }

  function showWho() {
    const name = state.name || "";
    if (!state.user) {
      el.whoami.textContent = name;
    } else if (state.guest) {
      el.whoami.textContent = name ? name + " (guest)" : "guest";
      el.whoami.title = "Your guest identity, kept by this browser: " + state.user;
    } else {
      el.whoami.textContent = (name ? name + " · " : "") + "signed in as " + state.user + " ✓";
      el.whoami.title = "Verified user " + state.user;
    }
    el.whoami.dataset.user = state.user;
    el.whoami.dataset.guest = String(state.guest);
    el.signIn.hidden = !state.guest;
    el.signOut.hidden = state.guest;
  }

  function tokenFromUrl() {
    const params = new URLSearchParams(location.search);
    const token = params.get("token");
    if (token) {
      params.delete("token");
      const query = params.toString();
      history.replaceState(null, "", location.pathname + (query ? "?" + query : "") + location.hash);
    }
    return token;
  }

  let sessionReady = openSession(tokenFromUrl()).catch((err) => {
    state.sessionError = "* Could not sign in with the token in the link: " + errorText(err);
    return openSession(null);
  });

  // signIn(token): become the token's user (a JWT); the room is rejoined as that user.
  function signIn(token) {
    sessionReady = openSession(token);
    return sessionReady.then((session) => {
      if (state.room && el.stepChat.hidden === false) reconnectNow(true);
      return session;
    });
  }

  async function signOut() {
    try {
      await fetch("/api/session", { method: "DELETE", credentials: "same-origin" });
    } catch (_) {
      /* the new session below says what is wrong */
    }
    sessionReady = openSession(null);
    await sessionReady;
    if (state.room && el.stepChat.hidden === false) reconnectNow(true);
  }

  el.signIn.addEventListener("click", () => {
    el.signInError.textContent = "";
    el.tokenInput.value = "";
    el.signInDialog.showModal();
    el.tokenInput.focus();
  });
  el.signInCancel.addEventListener("click", () => el.signInDialog.close());
  el.signInForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = el.tokenInput.value.trim();
    if (!token) {
      el.signInError.textContent = "Paste your token first.";
      return;
    }
    try {
      await signIn(token);
      el.signInDialog.close();
    } catch (err) {
      el.signInError.textContent = "Not signed in: " + errorText(err);
      el.tokenInput.focus();
    }
  });
  el.signOut.addEventListener("click", () => signOut());

  // ---------------------------------------------------------------- websocket

  function wsUrl(room) {
    const proto = location.protocol === "http:" ? "ws:" : "wss:";
    return proto + "//" + location.host + "/api/room/" + encodeURIComponent(room) + "/websocket";
  }

  function clearTimers() {
    clearTimeout(state.reconnectTimer);
    clearTimeout(state.probeTimer);
    clearTimeout(state.nameTimer);
    clearTimeout(state.nameRefusal);
    state.reconnectTimer = state.probeTimer = state.nameTimer = state.nameRefusal = null;
    state.reconnectAt = 0;
  }

  function dropSocket() {
    const ws = state.ws;
    state.ws = null;
    if (ws) {
      try {
        ws.close(1000, "bye");
      } catch (_) {
        /* already closed */
      }
    }
    unsureInflight();
  }

  // Frames sent on a socket that went away: the server may have taken them. Their echo,
  // if any, comes with the history on the next connection; the rest are sent again.
  function unsureInflight() {
    for (const f of state.inflight) if (f !== "name") f.status = "unsure";
    state.inflight = [];
  }

  function connect() {
    clearTimers();
    dropSocket();
    state.phase = "connecting";
    state.lastJoined = "";
    setStatus("connecting", "Connecting…");
    renderOutbox();

    let ws;
    try {
      ws = new WebSocket(wsUrl(state.room));
    } catch (err) {
      systemLine("* Error: " + errorText(err));
      scheduleReconnect();
      return;
    }
    state.ws = ws;

    ws.addEventListener("open", () => {
      if (state.ws !== ws) return;
      sendName();
    });

    ws.addEventListener("message", (event) => {
      if (state.ws !== ws) return;
      let data;
      try {
        data = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      if (data && typeof data === "object") handleFrame(data);
    });

    ws.addEventListener("close", (event) => {
      if (state.ws !== ws) return;
      onDisconnect(event.code, event.reason);
    });

    ws.addEventListener("error", () => {
      // A "close" event always follows; reconnection is handled there.
    });
  }

  function socketOpen() {
    return state.ws && state.ws.readyState === WebSocket.OPEN;
  }

  function sendFrame(frame, what) {
    chargeEstimate();
    const ws = state.ws;
    ws.send(JSON.stringify(frame));
    state.inflight.push(what);
    // A frame the server never answers must not hold the queue: after a while the socket is
    // replaced, and the next connection's history tells whether the message was taken.
    setTimeout(() => {
      if (state.ws !== ws || !state.inflight.includes(what)) return;
      if (what !== "name" && what.status !== "sending") return;
      dropSocket();
      scheduleReconnect();
    }, UNANSWERED_MS);
  }

  function sendName() {
    clearTimeout(state.nameTimer);
    state.nameTimer = null;
    if (!socketOpen()) return;
    state.phase = "joining";
    setStatus("joining", "Joining…");
    sendFrame({ name: state.name }, "name");
  }

  // The chat demo's limiter, as the client estimates it for its IP.
  function chargeEstimate() {
    const now = performance.now() / 1000;
    state.limiterNext = Math.max(now, state.limiterNext) + DEMO_INTERVAL_S;
  }

  // Seconds to wait after a refusal: what the server says, else the demo's rule.
  function refusalDelay(data) {
    const r = Number(data.retry_after);
    if (data.retry_after !== undefined && Number.isFinite(r) && r >= 0) return Math.max(r, 0.05);
    const now = performance.now() / 1000;
    state.limiterNext = Math.max(state.limiterNext, now + DEMO_GRACE_S + DEMO_INTERVAL_S);
    return Math.max(1, state.limiterNext - now - DEMO_GRACE_S);
  }

  function isTransient(data) {
    return (
      data.retry_after !== undefined ||
      data.error === RATE_LIMITED ||
      /rate-limited|overloaded|try again|unavailable|timed? ?out/i.test(data.error)
    );
  }

  function handleFrame(data) {
    if (typeof data.error === "string") {
      onErrorFrame(data);
    } else if (typeof data.joined === "string") {
      state.lastJoined = data.joined;
      rosterAdd(data.joined);
      if (state.phase === "ready") systemLine(data.joined + " joined", "presence");
    } else if (typeof data.quit === "string") {
      rosterRemove(data.quit);
      if (state.phase === "ready") systemLine(data.quit + " left", "presence");
    } else if (data.ready === true) {
      onReady();
    } else if (data.ai && typeof data.ai === "object") {
      handleAiEvent(data.ai);
    } else if (data.upload && typeof data.upload === "object") {
      // another member's upload on its way (uploads.js shows it)
      if (window.durachatUploads && window.durachatUploads.progress) window.durachatUploads.progress(data.upload);
    } else if (typeof data.name === "string" && typeof data.message === "string") {
      if (data.kind === "ai") finishAiMessage(data);
      else if (data.kind === "system") systemNotice(data);
      else upsertMessage(data);
    }
    // Anything else (unknown frame kinds / keys) is ignored.
  }

  function onReady() {
    if (state.inflight[0] === "name") state.inflight.shift();
    // My own "joined" comes just before "ready": the name as the server normalized it.
    state.serverName = state.lastJoined || state.name;
    if (state.serverName !== state.name) {
      state.name = state.serverName; // the name the room shows is the one to remember
      rememberName(state.name);
      showWho();
    }
    state.phase = "ready";
    state.backoff = BACKOFF_MIN_MS;
    state.sawDown = false;
    setStatus("ready", "Connected");
    hideBanner();
    if (window.durachatUploads) window.durachatUploads.restore(state.room);
    // What the last socket may have sent and its history did not show: send again.
    for (const entry of state.outbox) if (entry.status === "unsure") entry.status = "queued";
    renderOutbox();
    pump();
    const active = document.activeElement;
    if (!active || active === document.body || el.stepChat.contains(active)) el.messageInput.focus();
  }

  function onErrorFrame(data) {
    const head = state.inflight.shift();
    const transient = isTransient(data);
    if (head === "name") {
      if (transient) {
        // The name frame was refused for now (the IP's rate limit, an overload): again later.
        const delay = refusalDelay(data);
        waitToJoin(delay, data.error);
      } else {
        // Refused for good, unless the socket closes at once (then the room refused it).
        const reason = data.error;
        clearTimeout(state.nameRefusal);
        state.nameRefusal = setTimeout(() => nameRefused(reason), NAME_REFUSAL_GRACE_MS);
        state.pendingError = reason;
      }
      return;
    }
    if (head && head !== "name") {
      if (transient) {
        head.status = "refused";
        head.reason = data.error;
        const delay = refusalDelay(data);
        state.cooldownUntil = Math.max(state.cooldownUntil, Date.now() + delay * 1000);
      } else {
        head.status = "failed";
        head.reason = data.error;
      }
      renderOutbox();
      pump();
      return;
    }
    state.pendingError = data.error; // a refusal before any frame: the close says more
    systemLine("* Error: " + data.error);
  }

  function waitToJoin(delaySeconds, reason) {
    state.phase = "joining-wait";
    const until = Date.now() + delaySeconds * 1000;
    state.reconnectAt = until;
    const tick = () => {
      if (state.phase !== "joining-wait") return;
      const left = Math.max(0, Math.ceil((state.reconnectAt - Date.now()) / 1000));
      setStatus("joining-wait", "The server is busy (" + shortReason(reason) + "); joining in " + left + " s");
    };
    tick();
    clearInterval(state.tickTimer);
    state.tickTimer = setInterval(tick, 250);
    clearTimeout(state.nameTimer);
    state.nameTimer = setTimeout(() => {
      clearInterval(state.tickTimer);
      state.reconnectAt = 0;
      sendName();
    }, delaySeconds * 1000);
  }

  function shortReason(reason) {
    return reason === RATE_LIMITED ? "rate limit" : String(reason).replace(/\.$/, "");
  }

  function nameRefused(reason) {
    stop();
    state.ws = null;
    showNameStep("The server refused the name “" + state.name + "”: " + reason + " Choose another name.");
  }

  function stop() {
    clearTimers();
    clearInterval(state.tickTimer);
    dropSocket();
    state.phase = "stopped";
  }

  function onDisconnect(code, reason) {
    state.ws = null;
    clearTimeout(state.nameTimer);
    clearInterval(state.tickTimer);
    unsureInflight();
    // Kept, greyed, until the next connection: the server sends "joined" for everyone again.
    el.roster.dataset.stale = "true";
    const said = state.pendingError || reason || "";
    state.pendingError = "";
    if (state.nameRefusal) {
      clearTimeout(state.nameRefusal); // it was the room that refused, not the name
      state.nameRefusal = null;
    }

    if (code === CLOSE_TOO_BIG) {
      stop();
      showNameStep("The server refused the name: " + (said || "too long") + " Choose a shorter one.");
      return;
    }
    if (code === CLOSE_POLICY) {
      stop();
      setStatus("stopped", "Not connected");
      const noRoom = /no such room/i.test(said);
      const text = noRoom
        ? "This room does not exist: the link may be old, or the private room expired before anyone used it. Create a new room or pick another."
        : "The server closed this chat: " + (said || "refused") + ". Pick another room, or try again.";
      if (noRoom) {
        el.inviteBox.hidden = true; // nothing to invite to, nothing to say
        setComposer(false);
      }
      const actions = [button("Choose a room", () => leaveRoom(), "")];
      if (!noRoom) actions.push(button("Try again", () => reconnectNow(true)));
      showBanner(text, actions);
      actions[0].focus();
      return;
    }
    if (state.phase === "stopped") return;
    if (code === CLOSE_TRY_AGAIN && said) systemLine("* " + said);
    scheduleReconnect();
  }

  function scheduleReconnect() {
    const delay = state.backoff;
    state.backoff = Math.min(state.backoff * 2, BACKOFF_MAX_MS);
    state.phase = "waiting";
    state.reconnectAt = Date.now() + delay;
    el.status.dataset.retryMs = String(delay);
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = setTimeout(connect, delay);
    clearTimeout(state.probeTimer);
    state.probeTimer = setTimeout(probe, Math.min(PROBE_MS, delay / 2));
    tickWaiting();
    clearInterval(state.tickTimer);
    state.tickTimer = setInterval(tickWaiting, 250);
    renderOutbox();
  }

  function tickWaiting() {
    if (state.phase !== "waiting") return;
    const left = Math.max(0, Math.ceil((state.reconnectAt - Date.now()) / 1000));
    setStatus("waiting", "Offline · reconnecting in " + left + " s");
  }

  // While waiting: once the gateway answers again after it did not (in this outage),
  // reconnect at once rather than at the end of the backoff. A gateway that answers all
  // along but refuses the socket (too many from this IP, ...) is tried by the backoff only.
  async function probe() {
    state.probeTimer = null;
    if (state.phase !== "waiting") return;
    let up = false;
    try {
      const resp = await fetch("/healthz", { cache: "no-store" });
      up = resp.ok;
    } catch (_) {
      up = false;
    }
    if (state.phase !== "waiting") return;
    if (up && state.sawDown) {
      reconnectNow(false);
      return;
    }
    if (!up) state.sawDown = true;
    state.probeTimer = setTimeout(probe, PROBE_MS);
  }

  function reconnectNow(resetBackoff) {
    if (resetBackoff) state.backoff = BACKOFF_MIN_MS;
    clearInterval(state.tickTimer);
    hideBanner();
    if (state.phase === "joining-wait" && socketOpen()) {
      sendName();
      return;
    }
    connect();
  }

  el.retryNow.addEventListener("click", () => reconnectNow(false));
  window.addEventListener("online", () => {
    if (state.phase === "waiting") reconnectNow(true);
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.phase === "waiting") reconnectNow(false);
  });

  // ---------------------------------------------------------------- the outbox
  // Every message typed stays in the log as "pending" until the server echoes it (its
  // broadcast with my name and text). A refusal (rate limit, overload) marks it and sends it
  // again after the announced retry_after; a permanent refusal keeps it for editing.

  function queueMessage(text, attachments) {
    const entry = {
      localId: state.nextLocalId++,
      text,
      attachments,
      name: state.name,
      status: "queued",
      reason: "",
      li: null,
    };
    state.outbox.push(entry);
    entry.li = buildPending(entry);
    appendPending(entry.li);
    renderEntry(entry);
    pump();
    return entry;
  }

  function buildPending(entry) {
    const li = elem("li", "message mine pending");
    li.dataset.localId = String(entry.localId);
    const author = elem("span", "author");
    author.textContent = entry.name;
    const text = elem("span", "text");
    text.textContent = entry.text;
    const note = elem("span", "pending-note");
    const actions = elem("span", "pending-actions");
    actions.append(
      button("Retry now", () => retryEntry(entry), "quiet small retry"),
      button("Edit", () => editEntry(entry), "quiet small edit"),
      button("Discard", () => discardEntry(entry), "quiet small discard"),
    );
    li.append(author, text, note, actions);
    return li;
  }

  function renderEntry(entry) {
    const li = entry.li;
    if (!li) return;
    li.dataset.state = entry.status;
    const note = li.querySelector(".pending-note");
    let text = "";
    const waiting = entry.status === "queued" || entry.status === "unsure";
    if (entry.status === "sending") text = "sending…";
    else if (waiting && state.phase !== "ready") text = "waiting for the connection…";
    else if (waiting && state.cooldownUntil > Date.now()) text = "waiting its turn…";
    else if (waiting) text = "sending…";
    else if (entry.status === "refused") {
      const left = Math.max(0, Math.ceil((state.cooldownUntil - Date.now()) / 1000));
      text = "Not sent: " + shortReason(entry.reason) + ". Retrying in " + left + " s";
    } else if (entry.status === "failed") text = "Not sent: " + entry.reason;
    note.textContent = text;
    li.classList.toggle("refused", entry.status === "refused");
    li.classList.toggle("failed", entry.status === "failed");
    li.querySelector(".retry").hidden = entry.status !== "refused" && entry.status !== "failed";
    li.querySelector(".edit").hidden = entry.status === "sending";
    li.querySelector(".discard").hidden = entry.status === "sending";
  }

  function renderOutbox() {
    for (const entry of state.outbox) renderEntry(entry);
    const ticking = state.outbox.some((e) => e.status === "refused");
    if (ticking && !state.outboxTick) {
      state.outboxTick = setInterval(() => {
        for (const entry of state.outbox) if (entry.status === "refused") renderEntry(entry);
      }, 250);
    } else if (!ticking && state.outboxTick) {
      clearInterval(state.outboxTick);
      state.outboxTick = null;
    }
  }

  // Sends the next message, in order and one at a time: the next goes when the last is
  // echoed or refused, so a message sent again after a refusal is never overtaken by one
  // typed after it (a burst costs a round trip per message, a few ms).
  function pump() {
    clearTimeout(state.pumpTimer);
    state.pumpTimer = null;
    if (state.phase !== "ready" || !socketOpen()) return;
    const wait = state.cooldownUntil - Date.now();
    if (wait > 0) {
      state.pumpTimer = setTimeout(pump, wait);
      renderOutbox();
      return;
    }
    if (!state.outbox.some((e) => e.status === "sending")) {
      const entry = state.outbox.find((e) => e.status === "queued" || e.status === "refused");
      if (entry) {
        const frame = { message: entry.text };
        if (entry.attachments && entry.attachments.length) frame.attachments = entry.attachments;
        entry.status = "sending";
        sendFrame(frame, entry);
      }
    }
    renderOutbox();
  }

  // A message frame with my name: the echo of the oldest entry with its text in flight.
  function matchEcho(data) {
    const entry = state.outbox.find(
      (e) => (e.status === "sending" || e.status === "unsure") && e.text === data.message &&
        (e.name === data.name || data.name === state.serverName),
    );
    if (!entry) return null;
    const at = state.inflight.indexOf(entry);
    if (at >= 0) state.inflight.splice(at, 1);
    removeEntry(entry);
    pump();
    return entry;
  }

  function removeEntry(entry) {
    const at = state.outbox.indexOf(entry);
    if (at >= 0) state.outbox.splice(at, 1);
    if (entry.li) entry.li.remove();
    entry.li = null;
    renderOutbox();
  }

  function retryEntry(entry) {
    entry.status = "queued";
    state.cooldownUntil = 0;
    renderEntry(entry);
    pump();
  }

  function editEntry(entry) {
    const current = el.messageInput.value;
    el.messageInput.value = entry.text + (current ? "\n" + current : "");
    removeEntry(entry);
    composeChanged();
    el.messageInput.focus();
    pump();
  }

  function discardEntry(entry) {
    removeEntry(entry);
    el.messageInput.focus();
    pump();
  }

  // ---------------------------------------------------------------- composing

  function composeChanged() {
    const n = chars(el.messageInput.value);
    const over = n > MAX_MESSAGE;
    el.counter.textContent = n >= COUNTER_FROM ? n + "/" + MAX_MESSAGE : "";
    el.counter.classList.toggle("over", over);
    el.messageInput.setAttribute("aria-invalid", String(over));
    if (!over && el.composeError.dataset.kind === "length") setComposeError("");
    // Grow with the text, up to a few lines.
    el.messageInput.style.height = "auto";
    el.messageInput.style.height = Math.min(el.messageInput.scrollHeight + 2, 160) + "px";
  }

  function setComposeError(text, kind) {
    el.composeError.textContent = text;
    el.composeError.dataset.kind = kind || "";
  }

  function submitMessage() {
    const text = el.messageInput.value;
    const hasFiles = el.send.dataset.attachments && el.send.dataset.attachments !== "0";
    if (!text.trim() && !hasFiles) {
      el.messageInput.focus();
      return;
    }
    const n = chars(text);
    if (n > MAX_MESSAGE) {
      setComposeError(
        "Too long: " + n + " characters, at most " + MAX_MESSAGE + ". Shorten it by " + (n - MAX_MESSAGE) + ", or split it in two.",
        "length",
      );
      el.messageInput.focus();
      return;
    }
    if (AI_ONLY.test(text)) {
      setComposeError("Type your question after @ai, e.g. “@ai what is a durable object?”", "ai");
      el.messageInput.focus();
      return;
    }
    setComposeError("");
    const attachments = window.durachatUploads ? window.durachatUploads.take() : [];
    queueMessage(text, attachments);
    el.messageInput.value = "";
    composeChanged();
    el.messageInput.focus();
  }

  el.chatForm.addEventListener("submit", (event) => {
    event.preventDefault();
    submitMessage();
  });
  el.messageInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submitMessage();
    }
  });
  el.messageInput.addEventListener("input", composeChanged);

  // ---------------------------------------------------------------- scrolling

  el.messages.addEventListener("scroll", () => {
    state.stick = isNearBottom();
    if (state.stick) clearUnread();
  });
  el.newBelow.addEventListener("click", () => {
    scrollToBottom();
    el.messageInput.focus();
  });
  // The log changes size when the roster, the banner or the input grows: keep the newest
  // message in sight if the reader was at the bottom.
  if (window.ResizeObserver) new ResizeObserver(keepBottom).observe(el.messages);

  // ---------------------------------------------------------------- steps

  function resetLog() {
    el.messages.replaceChildren();
    rosterClear();
    state.byId = new Map();
    state.ai = new Map();
    state.lastSeenTimestamp = 0;
    state.lastDay = "";
    state.unreadMarker = null;
    state.stick = true;
    clearUnread();
  }

  function startChat(room) {
    if (state.room !== room) {
      if (state.room) state.outboxes.set(state.room, state.outbox);
      resetLog();
      state.outbox = state.outboxes.get(room) || [];
      state.outboxes.delete(room);
      for (const entry of state.outbox) {
        if (entry.status === "sending") entry.status = "unsure";
        entry.li = buildPending(entry);
        appendPending(entry.li);
      }
      state.cooldownUntil = 0;
    }
    state.room = room;
    if (decodeHashSafe() !== room) location.hash = room;
    const isPrivate = PRIVATE_ID.test(room);
    el.roomTitle.textContent = roomLabel(room);
    el.roomTitle.title = room;
    document.title = (isPrivate ? "private room" : room) + " · durachat";
    el.inviteBox.hidden = !isPrivate;
    el.inviteLink.value = location.origin + location.pathname + "#" + room;
    el.copyStatus.textContent = "";
    hideBanner();
    setComposer(true);
    showStep(el.stepChat);
    composeChanged();
    el.messageInput.focus();
    sessionReady.then(() => {
      if (state.sessionError) systemLine(state.sessionError);
      state.sessionError = "";
      state.backoff = BACKOFF_MIN_MS;
      connect();
    });
  }

  function leaveRoom() {
    stop();
    if (state.room) state.outboxes.set(state.room, state.outbox); // kept for a return
    state.outbox = [];
    state.room = "";
    resetLog();
    state.phase = "idle";
    setStatus("idle", "");
    rosterClear();
    history.replaceState(null, "", location.pathname + location.search);
    showRoomStep();
  }

  function showRoomStep() {
    showStep(el.stepRoom);
    el.roomError.textContent = "";
    el.createPrivate.disabled = false;
    el.roomInput.focus();
    loadRooms();
  }

  function showNameStep(error) {
    el.nameInput.value = state.name || el.nameInput.value;
    el.nameError.textContent = error || "";
    const hashRoom = roomFromHash();
    el.inviteHint.hidden = !(hashRoom && PRIVATE_ID.test(hashRoom));
    el.inviteHint.textContent = "You were invited to a private room. Choose a name to join it.";
    showStep(el.stepName);
    el.nameInput.focus();
    el.nameInput.select();
  }

  function rememberName(name) {
    try {
      localStorage.setItem(NAME_KEY, name);
    } catch (_) {
      /* storage off: the name lasts for this page */
    }
  }

  function nameProblem(name) {
    if (!name) return "Please enter a name.";
    if (chars(name) > MAX_NAME) return "Names are at most " + MAX_NAME + " characters (this one has " + chars(name) + ").";
    if (/[\u0000-\u001f\u007f]/.test(name)) return "Names may not contain control characters.";
    if (RESERVED.has(name.normalize("NFKC").toLowerCase())) return "“" + name + "” is reserved for the room's own voices; choose another name.";
    return "";
  }

  el.nameForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = el.nameInput.value.normalize("NFKC").trim();
    const problem = nameProblem(name);
    if (problem) {
      el.nameError.textContent = problem;
      el.nameInput.focus();
      return;
    }
    el.nameError.textContent = "";
    const changed = name !== state.name;
    state.name = name;
    rememberName(name);
    showWho();
    const hashRoom = roomFromHash();
    if (state.room && (changed || state.phase === "stopped") && (!hashRoom || hashRoom === state.room)) {
      // A new name in the same room: join again under it.
      for (const entry of state.outbox) if (entry.status !== "sending") entry.name = name;
      showStep(el.stepChat);
      el.messageInput.focus();
      state.backoff = BACKOFF_MIN_MS;
      connect();
    } else if (state.room && !changed && state.phase !== "idle") {
      showStep(el.stepChat);
      el.messageInput.focus();
    } else if (hashRoom) {
      startChat(hashRoom);
    } else {
      showRoomStep();
    }
  });

  el.changeName.addEventListener("click", () => showNameStep(""));

  el.roomForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const room = el.roomInput.value.trim();
    if (!isValidRoom(room)) {
      el.roomError.textContent = room
        ? "Room names are at most " + MAX_ROOM + " characters."
        : "Please enter a room name.";
      el.roomInput.focus();
      return;
    }
    el.roomError.textContent = "";
    startChat(room);
  });

  el.createPrivate.addEventListener("click", async () => {
    el.createPrivate.disabled = true;
    el.roomError.textContent = "";
    try {
      const resp = await fetch("/api/room", { method: "POST" });
      if (!resp.ok) throw await httpError(resp);
      const body = (await resp.text()).trim();
      if (!PRIVATE_ID.test(body)) throw new Error("unexpected room id from server");
      el.createPrivate.disabled = false;
      startChat(body);
    } catch (err) {
      el.roomError.textContent = "Could not create a private room: " + errorText(err) + ". Try again in a moment.";
      el.createPrivate.disabled = false;
      el.createPrivate.focus();
    }
  });

  el.leave.addEventListener("click", () => leaveRoom());

  el.copyInvite.addEventListener("click", async () => {
    const link = el.inviteLink.value;
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(link);
      } else {
        el.inviteLink.select();
        if (!document.execCommand("copy")) throw new Error("copying is blocked here");
      }
      el.copyStatus.textContent = "Link copied.";
    } catch (err) {
      el.inviteLink.select();
      el.copyStatus.textContent = "Could not copy (" + errorText(err) + "): the link is selected, copy it yourself.";
    }
  });

  window.addEventListener("hashchange", () => {
    const room = roomFromHash();
    if (!room || room === state.room || !state.name) return;
    startChat(room);
  });

  // ---------------------------------------------------------------- the room list

  let roomsLoading = null;

  function loadRooms() {
    if (roomsLoading) return roomsLoading;
    el.roomsStatus.textContent = "Loading…";
    roomsLoading = fetch("/api/rooms?limit=30", { cache: "no-store" })
      .then(async (resp) => {
        if (!resp.ok) throw await httpError(resp);
        const data = await resp.json();
        renderRooms(Array.isArray(data.rooms) ? data.rooms : []);
      })
      .catch((err) => {
        el.roomsStatus.textContent = "Could not load the public rooms: " + errorText(err) + ". Refresh to try again.";
      })
      .finally(() => {
        roomsLoading = null;
      });
    return roomsLoading;
  }

  function renderRooms(rooms) {
    el.roomList.replaceChildren();
    el.roomsStatus.textContent = rooms.length ? "" : "No public rooms yet: name one above to create it.";
    for (const r of rooms) {
      if (typeof r.name !== "string" || !isValidRoom(r.name)) continue;
      const li = elem("li", "room");
      const b = elem("button", "room-button");
      b.type = "button";
      b.dataset.room = r.name;
      const name = elem("span", "room-name");
      name.textContent = "#" + r.name;
      const info = elem("span", "room-info");
      const count = Number(r.message_count) || 0;
      info.textContent = plural(count, "message", "messages") + " · " + ago(Number(r.last_activity) || 0);
      b.append(name, info);
      b.addEventListener("click", () => startChat(r.name));
      li.append(b);
      el.roomList.append(li);
    }
  }

  el.roomsRefresh.addEventListener("click", () => loadRooms());

  // ---------------------------------------------------------------- start

  // Hooks for the uploads client and for driving the renderer from the console or tests.
  window.durachat = {
    state,
    signIn,
    signOut,
    handleFrame,
    upsertMessage,
    systemLine,
    systemNotice,
    handleAiEvent,
    finishAiMessage,
    reconnectNow,
  };

  let remembered = "";
  try {
    remembered = localStorage.getItem(NAME_KEY) || "";
  } catch (_) {
    /* storage off */
  }
  if (remembered && !nameProblem(remembered)) {
    state.name = remembered;
    showWho();
    const hashRoom = roomFromHash();
    if (hashRoom) startChat(hashRoom);
    else showRoomStep();
  } else {
    showNameStep("");
  }
})();
