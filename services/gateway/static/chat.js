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
    // place later (e.g. a streamed AI reply growing token by token).
    byId: new Map(),
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

  function buildMessage() {
    const li = document.createElement("li");
    li.className = "message";

    const author = document.createElement("span");
    author.className = "author";

    const text = document.createElement("span");
    text.className = "text";

    const time = document.createElement("time");
    time.className = "time";

    li.append(author, text, time);
    return li;
  }

  function fillMessage(li, data) {
    const ts = Number(data.timestamp);
    li.querySelector(".author").textContent = String(data.name);
    li.querySelector(".text").textContent = String(data.message);
    const time = li.querySelector(".time");
    if (Number.isFinite(ts)) {
      li.dataset.timestamp = String(ts);
      time.textContent = formatTime(ts);
      time.dateTime = new Date(ts).toISOString();
    }
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

  function systemLine(text) {
    const li = document.createElement("li");
    li.className = "system";
    li.textContent = text;
    appendToLog(li);
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
      const active = document.activeElement;
      if (!active || active === document.body || el.stepChat.contains(active)) el.messageInput.focus();
    } else if (typeof data.name === "string" && typeof data.message === "string") {
      upsertMessage(data);
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
    state.ws.send(JSON.stringify({ message: text.slice(0, MAX_MESSAGE) }));
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
    connect();
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
    if (!text) return;
    if (sendMessage(text)) el.messageInput.value = "";
    el.messageInput.focus();
  });

  // Hook for future features (e.g. streamed AI replies updating a message by id).
  window.durachat = { state, upsertMessage, systemLine };

  showStep(el.stepName);
  el.nameInput.focus();
})();
