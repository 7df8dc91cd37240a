// durachat web client. Speaks the workers-chat-demo wire protocol.
// Plain script, no build step, no external resources.
// All user-provided data is rendered with textContent, never innerHTML.
"use strict";

(function () {
  const MAX_NAME = 32;
  const MAX_ROOM = 32;
  const MAX_MESSAGE = 256;
  const PRIVATE_ID = /^[0-9a-f]{64}$/;
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 10000;
  const CLOSE_TOO_BIG = 1009; // server closes with this when the name is too long
  const INCOMPLETE = " [incomplete]"; // ends the final text of a failed AI reply

  const $ = (id) => document.getElementById(id);

  const el = {
    stepName: $("step-name"),
    stepRoom: $("step-room"),
    stepChat: $("step-chat"),
    nameForm: $("name-form"),
    nameInput: $("name-input"),
    nameError: $("name-error"),
    roomForm: $("room-form"),
    roomInput: $("room-input"),
    createPrivate: $("create-private"),
    roomError: $("room-error"),
    roomTitle: $("room-title"),
    status: $("status"),
    messages: $("messages"),
    roster: $("roster"),
    chatForm: $("chat-form"),
    messageInput: $("message-input"),
    send: $("send"),
  };

  const state = {
    name: "",
    user: "", // the identity POST /api/session gave (a guest id, or a signed-in user)
    sessionError: "",
    room: "",
    ws: null,
    ready: false,
    backoff: BACKOFF_MIN_MS,
    reconnectTimer: null,
    stopped: false,
    // Highest timestamp rendered so far; history replayed after a reconnect is
    // skipped (the server hands out strictly increasing timestamps).
    lastSeenTimestamp: 0,
    // Message elements by server-provided id, so a message can be updated in
    // place later.
    byId: new Map(),
    // AI reply bubbles by reply id: { li, who, status, text, time, shown }, where
    // `shown` counts the characters (code points) in `text`, as chunk offsets do.
    ai: new Map(),
  };

  // ---------------------------------------------------------------- helpers

  function isValidRoom(room) {
    return PRIVATE_ID.test(room) || (room.length > 0 && room.length <= MAX_ROOM);
  }

  function roomFromHash() {
    let raw = location.hash.slice(1);
    if (!raw) return "";
    try {
      raw = decodeURIComponent(raw);
    } catch (_) {
      /* keep raw */
    }
    return isValidRoom(raw) ? raw : "";
  }

  function showStep(step) {
    for (const s of [el.stepName, el.stepRoom, el.stepChat]) s.hidden = s !== step;
  }

  function setStatus(kind) {
    // kind: "connecting" | "ready" | "disconnected"
    el.status.textContent = kind;
    el.status.dataset.state = kind;
  }

  function setInputEnabled(on) {
    el.messageInput.disabled = !on;
    el.send.disabled = !on;
  }

  function isNearBottom() {
    const m = el.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 40;
  }

  function appendToLog(node) {
    const stick = isNearBottom();
    el.messages.appendChild(node);
    if (stick) el.messages.scrollTop = el.messages.scrollHeight;
  }

  function formatTime(ts) {
    const d = new Date(ts);
    if (isNaN(d.getTime())) return "";
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  // ---------------------------------------------------------------- rendering

  function elem(tag, className) {
    const node = document.createElement(tag);
    node.className = className;
    return node;
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
  }

  function fillMessage(li, data) {
    li.querySelector(".author").textContent = String(data.name);
    li.querySelector(".text").textContent = String(data.message);
    if (window.durachatUploads) window.durachatUploads.render(li, data.attachments);
    setTime(li, data.timestamp);
    li.classList.toggle("mine", data.name === state.name);
  }

  // Render a chat message. Frames carrying an "id" are upserted: a later frame
  // with the same id updates the existing element in place (hook for streamed
  // replies). Frames without an id are de-duplicated by timestamp.
  function upsertMessage(data) {
    const id = data.id !== undefined && data.id !== null ? String(data.id) : "";
    const ts = Number(data.timestamp);

    if (id && state.byId.has(id)) {
      const stick = isNearBottom();
      fillMessage(state.byId.get(id), data);
      if (stick) el.messages.scrollTop = el.messages.scrollHeight;
      if (Number.isFinite(ts)) state.lastSeenTimestamp = Math.max(state.lastSeenTimestamp, ts);
      return;
    }
    if (!id && Number.isFinite(ts) && ts <= state.lastSeenTimestamp) return; // replayed history

    const li = buildMessage();
    if (id) {
      li.dataset.id = id;
      state.byId.set(id, li);
    }
    fillMessage(li, data);
    appendToLog(li);
    if (Number.isFinite(ts)) state.lastSeenTimestamp = Math.max(state.lastSeenTimestamp, ts);
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
    appendToLog(li);
  }

  function systemLine(text) {
    const li = elem("li", "system");
    li.textContent = text;
    appendToLog(li);
  }

  // ---------------------------------------------------------------- AI replies
  // One bubble per reply id. data-ai-state: queued -> streaming -> final | failed.
  // Class ai-final is set once the server's final text is shown (either outcome).

  function buildAiBubble(id) {
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
    appendToLog(li);
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
    const stick = isNearBottom();
    bubble.text.append(fresh.join("")); // a text node, never markup
    bubble.shown += fresh.length;
    if (stick) el.messages.scrollTop = el.messages.scrollHeight;
  }

  // {"ai": {"event": "queued" | "started" | "chunk" | "failed", "id": R, ...}}
  function handleAiEvent(ev) {
    if (!ev || typeof ev !== "object" || ev.id === undefined || ev.id === null) return;
    const id = String(ev.id);
    let bubble = state.ai.get(id);
    const asker = typeof ev.asker === "string" ? ev.asker : "";

    if (ev.event === "queued") {
      if (bubble) return;
      bubble = buildAiBubble(id);
      bubble.who.textContent = asker ? "AI, for " + asker : "AI";
      if (typeof ev.question === "string") bubble.li.title = ev.question;
      setAiState(bubble, "queued", "queued");
    } else if (ev.event === "started") {
      if (bubble && !isOpen(bubble)) return;
      if (!bubble) bubble = buildAiBubble(id);
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

  // The final AI message {"name": "AI", "message", "timestamp", "kind": "ai", "id"}:
  // replaces the streamed text; without a bubble (history) it adds a final one.
  function finishAiMessage(data) {
    const id = data.id !== undefined && data.id !== null ? String(data.id) : "";
    let bubble = id ? state.ai.get(id) : undefined;
    if (bubble) {
      isReplayed(data.timestamp); // only records it
    } else {
      if (isReplayed(data.timestamp)) return;
      bubble = buildAiBubble(id);
      bubble.who.textContent = String(data.name);
    }
    const stick = isNearBottom();
    const text = String(data.message);
    bubble.text.textContent = text;
    bubble.shown = Array.from(text).length;
    if (bubble.li.dataset.aiState === "failed" || text.endsWith(INCOMPLETE)) {
      setAiState(bubble, "failed", bubble.status.textContent || "stopped");
    } else {
      setAiState(bubble, "final", "");
    }
    bubble.li.classList.add("ai-final");
    setTime(bubble.li, data.timestamp);
    if (stick) el.messages.scrollTop = el.messages.scrollHeight;
  }

  function rosterAdd(name) {
    const li = document.createElement("li");
    li.textContent = name;
    li.dataset.name = name;
    if (name === state.name) li.classList.add("me");
    el.roster.appendChild(li);
  }

  function rosterRemove(name) {
    for (const li of el.roster.children) {
      if (li.dataset.name === name) {
        li.remove();
        return;
      }
    }
  }

  function rosterClear() {
    el.roster.replaceChildren();
  }

  // ---------------------------------------------------------------- session

  // Who this browser is: POST /api/session keeps (or first issues) its guest identity in an
  // HttpOnly cookie, which the WebSocket sends too, so a reload keeps it. A token in the
  // page's ?token= signs in with it once: it then lives in the cookie, not the address bar.
  function openSession(token) {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    return fetch("/api/session", { method: "POST", headers, credentials: "same-origin" })
      .then(async (resp) => {
        if (!resp.ok) throw new Error((await resp.text()) || "HTTP " + resp.status);
        const session = await resp.json();
        state.user = session.user_id;
        return session;
      })
      .catch((err) => {
        state.sessionError = "* Error: no session (" + (err && err.message ? err.message : err) + ")";
        return null;
      });
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

  let sessionReady = openSession(tokenFromUrl());

  // ---------------------------------------------------------------- websocket

  function wsUrl(room) {
    const proto = location.protocol === "http:" ? "ws:" : "wss:";
    return proto + "//" + location.host + "/api/room/" + encodeURIComponent(room) + "/websocket";
  }

  function connect() {
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    state.ready = false;
    setInputEnabled(false);
    setStatus("connecting");

    let ws;
    try {
      ws = new WebSocket(wsUrl(state.room));
    } catch (err) {
      systemLine("* Error: " + (err && err.message ? err.message : String(err)));
      scheduleReconnect();
      return;
    }
    state.ws = ws;

    ws.addEventListener("open", () => {
      if (state.ws !== ws) return;
      ws.send(JSON.stringify({ name: state.name }));
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

  function handleFrame(data) {
    if (typeof data.error === "string") {
      systemLine("* Error: " + data.error);
    } else if (typeof data.joined === "string") {
      rosterAdd(data.joined);
    } else if (typeof data.quit === "string") {
      rosterRemove(data.quit);
    } else if (data.ready === true) {
      state.ready = true;
      state.backoff = BACKOFF_MIN_MS;
      setStatus("ready");
      setInputEnabled(true);
      if (window.durachatUploads) window.durachatUploads.restore(state.room);
      const active = document.activeElement;
      if (!active || active === document.body || el.stepChat.contains(active)) el.messageInput.focus();
    } else if (data.ai && typeof data.ai === "object") {
      handleAiEvent(data.ai);
    } else if (typeof data.name === "string" && typeof data.message === "string") {
      if (data.kind === "ai") finishAiMessage(data);
      else if (data.kind === "system") systemNotice(data);
      else upsertMessage(data);
    }
    // Anything else (unknown frame kinds / keys) is ignored.
  }

  function onDisconnect(code, reason) {
    state.ws = null;
    state.ready = false;
    setInputEnabled(false);
    rosterClear(); // the server re-sends "joined" for everyone on reconnect
    setStatus("disconnected");

    if (code === CLOSE_TOO_BIG) {
      systemLine("* Error: " + (reason || "name too long"));
      state.stopped = true;
      return;
    }
    if (!state.stopped) scheduleReconnect();
  }

  function scheduleReconnect() {
    const delay = state.backoff;
    state.backoff = Math.min(state.backoff * 2, BACKOFF_MAX_MS);
    el.status.dataset.retryMs = String(delay);
    state.reconnectTimer = setTimeout(connect, delay);
  }

  function sendMessage(text) {
    if (!state.ready || !state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
    const frame = { message: text.slice(0, MAX_MESSAGE) };
    const attachments = window.durachatUploads ? window.durachatUploads.take() : [];
    if (attachments.length) frame.attachments = attachments;
    if (!frame.message && !attachments.length) return false;
    state.ws.send(JSON.stringify(frame));
    return true;
  }

  // ---------------------------------------------------------------- steps

  function startChat(room) {
    state.room = room;
    if (decodeHashSafe() !== room) location.hash = room;
    el.roomTitle.textContent = PRIVATE_ID.test(room) ? "Private room" : "#" + room;
    el.roomTitle.title = room;
    document.title = (PRIVATE_ID.test(room) ? "private room" : room) + " · durachat";
    showStep(el.stepChat);
    sessionReady.then(() => {
      if (state.sessionError) systemLine(state.sessionError);
      state.sessionError = "";
      connect();
    });
  }

  function decodeHashSafe() {
    const raw = location.hash.slice(1);
    try {
      return decodeURIComponent(raw);
    } catch (_) {
      return raw;
    }
  }

  el.nameForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = el.nameInput.value.trim();
    if (!name) {
      el.nameError.textContent = "Please enter a name.";
      el.nameInput.focus();
      return;
    }
    if (name.length > MAX_NAME) {
      el.nameError.textContent = "Names are at most " + MAX_NAME + " characters.";
      el.nameInput.focus();
      return;
    }
    el.nameError.textContent = "";
    state.name = name;

    const hashRoom = roomFromHash();
    if (hashRoom) {
      startChat(hashRoom);
    } else {
      showStep(el.stepRoom);
      el.roomInput.focus();
    }
  });

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
      const body = (await resp.text()).trim();
      if (!resp.ok) throw new Error(body || "HTTP " + resp.status);
      if (!PRIVATE_ID.test(body)) throw new Error("unexpected room id from server");
      startChat(body);
    } catch (err) {
      el.roomError.textContent = "Could not create a private room: " + (err && err.message ? err.message : err);
      el.createPrivate.disabled = false;
      el.createPrivate.focus();
    }
  });

  el.chatForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = el.messageInput.value;
    if (!text && el.send.dataset.attachments in { "": 1, "0": 1, undefined: 1 }) return;
    if (sendMessage(text)) el.messageInput.value = "";
    el.messageInput.focus();
  });

  // Hook for future features and for driving the renderer from the console.
  // signIn(token): become the token's user (a JWT); the next connection uses it.
  function signIn(token) {
    sessionReady = openSession(token);
    return sessionReady;
  }

  window.durachat = { state, signIn, handleFrame, upsertMessage, systemLine, systemNotice, handleAiEvent, finishAiMessage };

  showStep(el.stepName);
  el.nameInput.focus();
})();
