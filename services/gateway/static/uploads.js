// durachat uploads: a small tus 1.0 client on fetch (creation, PATCH in 1 MiB chunks, HEAD to
// resume, DELETE to cancel), the attach button, drag and drop, paste, a progress bar per
// file with speed and time left, pause/resume/cancel, resume after a reload (the File and its
// upload URL are kept in IndexedDB), and previews of attachments in messages.
// No third-party code. All user-provided data is rendered with textContent.
"use strict";

(function () {
  const TUS = { "Tus-Resumable": "1.0.0" };
  const CHUNK = 1024 * 1024;
  const MAX_ATTACHMENTS = 8;
  const DB_NAME = "durachat-uploads";
  const IMAGE = /^image\/(png|jpeg|webp|heic|heif)$/;

  const tray = document.getElementById("upload-tray");
  const input = document.getElementById("file-input");
  const attachButton = document.getElementById("attach");
  const chat = document.getElementById("step-chat");
  const messageInput = document.getElementById("message-input");
  const items = new Map(); // upload url -> item

  // ------------------------------------------------------------ IndexedDB (resume after reload)

  function db() {
    return new Promise((resolve, reject) => {
      const open = indexedDB.open(DB_NAME, 1);
      open.onupgradeneeded = () => open.result.createObjectStore("uploads", { keyPath: "url" });
      open.onsuccess = () => resolve(open.result);
      open.onerror = () => reject(open.error);
    });
  }

  async function store(op, value) {
    const conn = await db();
    return new Promise((resolve, reject) => {
      const tx = conn.transaction("uploads", op === "all" ? "readonly" : "readwrite");
      const os = tx.objectStore("uploads");
      const req = op === "put" ? os.put(value) : op === "delete" ? os.delete(value) : os.getAll();
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }

  // ------------------------------------------------------------ formatting

  function bytes(n) {
    if (n < 1024) return n + " B";
    const units = ["KB", "MB", "GB", "TB"];
    let i = -1;
    do { n /= 1024; i++; } while (n >= 1024 && i < units.length - 1);
    return n.toFixed(n < 10 ? 1 : 0) + " " + units[i];
  }

  function seconds(s) {
    if (!Number.isFinite(s)) return "…";
    if (s < 60) return Math.ceil(s) + " s";
    return Math.floor(s / 60) + " min " + Math.ceil(s % 60) + " s";
  }

  function b64(text) {
    return btoa(String.fromCharCode(...new TextEncoder().encode(text)));
  }

  // ------------------------------------------------------------ the tray

  function buildItem(record) {
    const li = document.createElement("li");
    li.className = "upload";
    li.dataset.testid = "upload";
    const name = document.createElement("span");
    name.className = "upload-name";
    name.textContent = record.name;
    const bar = document.createElement("progress");
    bar.max = record.size || 1;
    bar.value = 0;
    const info = document.createElement("span");
    info.className = "upload-info";
    info.dataset.testid = "upload-info";
    const pause = document.createElement("button");
    pause.type = "button";
    pause.className = "upload-pause";
    pause.dataset.testid = "upload-pause";
    pause.textContent = "Pause";
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "upload-cancel";
    cancel.dataset.testid = "upload-cancel";
    cancel.textContent = "Cancel";
    li.append(name, bar, info, pause, cancel);
    tray.append(li);
    const item = { record, li, bar, info, pause, offset: 0, paused: false, done: false, abort: null,
                   started: 0, startOffset: 0 };
    pause.addEventListener("click", () => (item.paused ? resume(item) : pauseItem(item)));
    cancel.addEventListener("click", () => cancelItem(item));
    items.set(record.url, item);
    return item;
  }

  function show(item, text) {
    item.bar.value = item.offset;
    item.li.dataset.state = item.done ? "done" : item.paused ? "paused" : "sending";
    if (text !== undefined) { item.info.textContent = text; return; }
    const size = item.record.size;
    const pct = size ? Math.floor((item.offset * 100) / size) : 100;
    if (item.done) { item.info.textContent = bytes(size) + " · ready to send"; return; }
    if (item.paused) { item.info.textContent = pct + "% · paused"; return; }
    const elapsed = (performance.now() - item.started) / 1000;
    const rate = elapsed > 0 ? (item.offset - item.startOffset) / elapsed : 0;
    const left = rate > 0 ? (size - item.offset) / rate : Infinity;
    item.info.textContent = pct + "% · " + bytes(rate) + "/s · " + seconds(left) + " left";
  }

  // ------------------------------------------------------------ tus

  async function create(file, room) {
    const type = file.type || "application/octet-stream";
    const metadata = "filename " + b64(file.name || "pasted") + ",filetype " + b64(type) + ",room " + b64(room);
    const resp = await fetch("/api/uploads", {
      method: "POST",
      headers: { ...TUS, "Upload-Length": String(file.size), "Upload-Metadata": metadata },
    });
    if (resp.status !== 201) throw new Error((await resp.text()).trim() || "HTTP " + resp.status);
    return new URL(resp.headers.get("Location"), location.href).pathname;
  }

  async function headOffset(url) {
    const resp = await fetch(url, { method: "HEAD", headers: TUS });
    if (!resp.ok) throw Object.assign(new Error("HTTP " + resp.status), { status: resp.status });
    return Number(resp.headers.get("Upload-Offset"));
  }

  async function send(item) {
    const { url, file, size } = item.record;
    item.started = performance.now();
    item.startOffset = item.offset;
    while (item.offset < size && !item.paused) {
      const end = Math.min(item.offset + CHUNK, size);
      item.abort = new AbortController();
      let resp;
      try {
        resp = await fetch(url, {
          method: "PATCH",
          headers: { ...TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": String(item.offset) },
          body: file.slice(item.offset, end),
          signal: item.abort.signal,
        });
      } catch (err) {
        if (item.paused) return;
        await new Promise((r) => setTimeout(r, 1000)); // network trouble: ask where we are
        item.offset = await headOffset(url).catch(() => item.offset);
        continue;
      }
      if (resp.status === 204) {
        item.offset = Number(resp.headers.get("Upload-Offset"));
        show(item);
      } else if (resp.status === 409) {
        item.offset = await headOffset(url);
      } else {
        throw new Error((await resp.text()).trim() || "HTTP " + resp.status);
      }
    }
    if (item.offset >= size) {
      item.done = true;
      item.pause.hidden = true;
      show(item);
      changed();
    }
  }

  async function run(item) {
    try {
      await send(item);
    } catch (err) {
      item.failed = true;
      show(item, "Failed: " + (err && err.message ? err.message : err));
      item.li.dataset.state = "failed";
    }
  }

  async function attach(file) {
    const room = window.durachat && window.durachat.state.room;
    if (!room) return;
    if (items.size >= MAX_ATTACHMENTS) return;
    const record = { url: "", file, name: file.name || "pasted image", size: file.size, type: file.type, room };
    let item;
    try {
      record.url = await create(file, room);
      item = buildItem(record);
      await store("put", record).catch(() => {}); // resumable after a reload
    } catch (err) {
      const li = document.createElement("li");
      li.className = "upload";
      li.dataset.state = "failed";
      li.textContent = (file.name || "file") + ": " + (err && err.message ? err.message : err);
      tray.append(li);
      setTimeout(() => li.remove(), 8000);
      return;
    }
    show(item);
    run(item);
  }

  function pauseItem(item) {
    item.paused = true;
    item.pause.textContent = "Resume";
    if (item.abort) item.abort.abort();
    show(item);
  }

  async function resume(item) {
    item.paused = false;
    item.pause.textContent = "Pause";
    item.offset = await headOffset(item.record.url).catch(() => item.offset);
    show(item);
    run(item);
  }

  async function cancelItem(item) {
    item.paused = true;
    if (item.abort) item.abort.abort();
    items.delete(item.record.url);
    item.li.remove();
    await store("delete", item.record.url).catch(() => {});
    if (!item.done) fetch(item.record.url, { method: "DELETE", headers: TUS }).catch(() => {});
    changed();
  }

  // Uploads of this room left unfinished by a closed tab: resumed from the server's offset.
  async function restore(room) {
    let records = [];
    try { records = await store("all"); } catch (_) { return; }
    for (const record of records) {
      if (record.room !== room || items.has(record.url)) continue;
      const item = buildItem(record);
      try {
        item.offset = await headOffset(record.url);
      } catch (err) {
        items.delete(record.url);
        item.li.remove();
        await store("delete", record.url).catch(() => {});
        continue;
      }
      show(item);
      run(item);
    }
  }

  // ------------------------------------------------------------ sending and showing

  function changed() {
    const ready = ready_ids().length > 0;
    document.getElementById("send").dataset.attachments = String(ready_ids().length);
    if (ready && messageInput.placeholder !== "Add a message, or send the files…") {
      messageInput.placeholder = "Add a message, or send the files…";
    }
  }

  function ready_ids() {
    return [...items.values()].filter((i) => i.done).map((i) => i.record.url.split("/").pop());
  }

  // Called by chat.js when a message goes out: the finished uploads ride on it.
  function take() {
    const ids = [];
    for (const [url, item] of items) {
      if (!item.done) continue;
      ids.push(url.split("/").pop());
      items.delete(url);
      item.li.remove();
      store("delete", url).catch(() => {});
    }
    messageInput.placeholder = "Type a message…";
    changed();
    return ids;
  }

  function render(li, ids) {
    let box = li.querySelector(".attachments");
    if (!Array.isArray(ids) || ids.length === 0) { if (box) box.remove(); return; }
    if (box && box.dataset.ids === ids.join(",")) return;
    if (box) box.remove();
    box = document.createElement("div");
    box.className = "attachments";
    box.dataset.ids = ids.join(",");
    li.append(box);
    for (const id of ids) {
      if (!/^[0-9a-f]{64}$/.test(id)) continue;
      const url = "/api/uploads/" + id;
      const card = document.createElement("a");
      card.className = "attachment";
      card.dataset.testid = "attachment";
      card.href = url;
      card.target = "_blank";
      card.rel = "noopener";
      card.textContent = "attachment";
      box.append(card);
      fetch(url, { headers: { Range: "bytes=0-0" } }).then((resp) => {
        if (!resp.ok) { card.textContent = "(attachment unavailable)"; return; }
        const type = (resp.headers.get("Content-Type") || "").split(";")[0];
        const total = Number((resp.headers.get("Content-Range") || "").split("/")[1]);
        const match = /filename="([^"]*)"/.exec(resp.headers.get("Content-Disposition") || "");
        const name = match ? match[1] : "file";
        card.textContent = "";
        if (IMAGE.test(type)) {
          const img = document.createElement("img");
          img.className = "preview";
          img.dataset.testid = "preview";
          img.alt = name;
          img.src = url;
          card.append(img);
        }
        const label = document.createElement("span");
        label.className = "attachment-label";
        label.textContent = name + " · " + type + " · " + bytes(total || 0);
        card.append(label);
      }).catch(() => { card.textContent = "(attachment unavailable)"; });
    }
  }

  // ------------------------------------------------------------ others' uploads in the room

  // {"upload": {id, name, type, received, total, status}} frames: files others are uploading
  // to this room, shown under the tray until they are stored (ours are in the tray already).
  const roomUploads = new Map(); // upload id -> li
  let roomList = null;

  function progress(event) {
    if (!event || typeof event.id !== "string") return;
    for (const item of items.values()) {
      if (item.record.url.endsWith("/" + event.id)) return;
    }
    if (!roomList) {
      roomList = document.createElement("ul");
      roomList.className = "room-uploads";
      roomList.dataset.testid = "room-uploads";
      roomList.setAttribute("aria-label", "Files others are uploading");
      tray.after(roomList);
    }
    let li = roomUploads.get(event.id);
    if (!li) {
      li = document.createElement("li");
      li.className = "room-upload";
      li.dataset.testid = "room-upload";
      const name = document.createElement("span");
      name.className = "upload-name";
      const bar = document.createElement("progress");
      const info = document.createElement("span");
      info.className = "upload-info";
      li.append(name, bar, info);
      roomList.append(li);
      roomUploads.set(event.id, li);
    }
    const [name, bar, info] = li.children;
    const total = Number(event.total) || 0;
    const received = Math.min(Number(event.received) || 0, total);
    name.textContent = String(event.name || "a file");
    bar.max = total || 1;
    bar.value = received;
    li.dataset.state = event.status === "stored" ? "stored" : "receiving";
    const pct = total ? Math.floor((received * 100) / total) : 100;
    info.textContent = event.status === "stored"
      ? bytes(total) + " · uploaded"
      : pct + "% of " + bytes(total) + " · someone is uploading";
    if (event.status === "stored") {
      setTimeout(() => {
        if (roomUploads.get(event.id) === li) { roomUploads.delete(event.id); li.remove(); }
      }, 5000);
    }
  }

  // ------------------------------------------------------------ input

  attachButton.addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    for (const file of input.files) attach(file);
    input.value = "";
  });
  chat.addEventListener("dragover", (event) => {
    if (event.dataTransfer && [...event.dataTransfer.types].includes("Files")) {
      event.preventDefault();
      chat.classList.add("dropping");
    }
  });
  chat.addEventListener("dragleave", () => chat.classList.remove("dropping"));
  chat.addEventListener("drop", (event) => {
    chat.classList.remove("dropping");
    if (!event.dataTransfer || event.dataTransfer.files.length === 0) return;
    event.preventDefault();
    for (const file of event.dataTransfer.files) attach(file);
  });
  messageInput.addEventListener("paste", (event) => {
    const files = event.clipboardData ? [...event.clipboardData.files] : [];
    if (files.length === 0) return;
    event.preventDefault();
    for (const file of files) attach(file);
  });

  window.durachatUploads = { attach, take, render, restore, items, progress };
})();
