// The fleet page: reads GET /admin/events (server-sent events, read with fetch so the admin key
// can travel in the Authorization header), keeps the fleet's state from the snapshot and the
// events that follow, and draws it. Every string from the server reaches the DOM as text
// (textContent, Text nodes, attribute values), never as markup.
"use strict";

(() => {
  const KEY_STORE = "cortex-admin-key";
  const LOG_CAP = 200; // event-log lines kept
  const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000];
  const SILENCE_MS = 45000; // the gateway sends a keep-alive every 15 s: this much quiet is a dead stream
  const STEADY_MS = 5000; // a stream that lived this long resets the backoff
  const REFRESH_MS = 400; // debounce of the /admin/fleet read that fills in derived fields
  const FOLLOW_MS = 1000; // and how soon it is read again while a neuron is busy
  const PALETTE = 8; // model colours (app.css: --m0 … --m7)

  // --- state --------------------------------------------------------------------------------

  const fleet = {
    nodes: new Map(), // name -> node: the snapshot's node, models as a Map id -> model
    catalogue: [],
    aliases: {},
    stats: {},
    waiting: {},
    loaded: false, // a snapshot has arrived
  };
  const conn = { state: "connecting", detail: "", retryAt: 0, lastId: null, attempt: 0 };
  const pending = new Set(); // actions in progress: "unload:NODE/MODEL", "load:MODEL"
  const confirmFor = new Map(); // "NODE/MODEL" -> the gateway's 409 message (asks to force)

  let adminKey = readKey();

  function readKey() {
    try {
      return sessionStorage.getItem(KEY_STORE) || "";
    } catch {
      return "";
    }
  }

  function storeKey(key) {
    adminKey = key;
    try {
      sessionStorage.setItem(KEY_STORE, key);
    } catch {
      /* storage refused (private mode): the key lives until the tab reloads */
    }
  }

  // --- DOM helpers ---------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  // An element; attrs are set as attributes or properties, kids appended as nodes or text.
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = String(v);
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) el.append(kid);
    return el;
  }

  function setText(el, text) {
    const s = text === null || text === undefined ? "" : String(text);
    if (el.textContent !== s) el.textContent = s;
  }

  function setAttr(el, name, value) {
    if (value === null || value === undefined || value === false) {
      if (el.hasAttribute(name)) el.removeAttribute(name);
    } else {
      const s = value === true ? "" : String(value);
      if (el.getAttribute(name) !== s) el.setAttribute(name, s);
    }
  }

  // Keeps parent's children in step with items, one element per key: existing elements are
  // updated in place (so focus, selections and test handles survive), new ones created, the
  // rest removed.
  function sync(parent, items, keyOf, create, update) {
    const existing = new Map();
    for (const el of Array.from(parent.children)) existing.set(el.dataset.key, el);
    const keep = new Set();
    items.forEach((item, i) => {
      const key = String(keyOf(item));
      let el = existing.get(key);
      if (!el) {
        el = create(item);
        el.dataset.key = key;
      }
      update(el, item);
      keep.add(key);
      const at = parent.children[i];
      if (at !== el) parent.insertBefore(el, at || null);
    });
    for (const [key, el] of existing) if (!keep.has(key)) el.remove();
  }

  // --- formatting ----------------------------------------------------------------------------

  function fmtMb(mb) {
    if (mb === null || mb === undefined || Number.isNaN(mb)) return "–";
    if (Math.abs(mb) >= 1024) return `${(mb / 1024).toFixed(1)} GiB`;
    return `${Math.round(mb)} MiB`;
  }

  function fmtSecs(s) {
    if (s === null || s === undefined) return "–";
    s = Math.max(0, s);
    if (s < 60) return `${Math.floor(s)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function fmtClock(epochSecs) {
    const d = epochSecs ? new Date(epochSecs * 1000) : new Date();
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
  }

  function fmtNum(x, digits) {
    return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
  }

  function colourOf(model) {
    let hash = 0;
    for (const ch of String(model)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
    return `var(--m${hash % PALETTE})`;
  }

  // --- the gateway's API --------------------------------------------------------------------

  let keyWaiter = null; // one pending request for the admin key, shared by every caller

  function askKey(message) {
    if (!keyWaiter) {
      let resolve;
      const promise = new Promise((r) => (resolve = r));
      keyWaiter = { promise, resolve };
    }
    const form = $("auth");
    setText($("auth-message"), message);
    if (form.hidden) {
      form.hidden = false;
      const input = $("auth-key");
      input.value = "";
      input.focus();
    }
    setConn("auth", message);
    render();
    return keyWaiter.promise;
  }

  function onKeySubmit(event) {
    event.preventDefault();
    const key = $("auth-key").value.trim();
    if (!key) return;
    storeKey(key);
    $("auth").hidden = true;
    const waiter = keyWaiter;
    keyWaiter = null;
    if (waiter) waiter.resolve();
  }

  async function errorOf(resp) {
    let text = "";
    try {
      text = await resp.text();
      const body = JSON.parse(text);
      const err = body && body.error;
      if (err && typeof err === "object") return { message: String(err.message || resp.statusText), code: err.code };
    } catch {
      /* not JSON: the text itself */
    }
    return { message: text.trim().slice(0, 300) || `HTTP ${resp.status} ${resp.statusText}`, code: null };
  }

  // fetch with the admin key; a 401/403 asks for the key (once, in the page) and tries again.
  async function api(path, { method = "GET", body, headers = {}, signal } = {}) {
    for (;;) {
      const h = { ...headers };
      if (adminKey) h.Authorization = `Bearer ${adminKey}`;
      if (body !== undefined) h["Content-Type"] = "application/json";
      const resp = await fetch(path, {
        method,
        headers: h,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        cache: "no-store",
      });
      if (resp.status !== 401 && resp.status !== 403) return resp;
      const { message } = await errorOf(resp);
      await askKey(
        resp.status === 401 && !adminKey
          ? "This gateway asks for an admin key to show its fleet."
          : `That key was refused: ${message}.`,
      );
    }
  }

  // --- the event stream ---------------------------------------------------------------------

  // A server-sent-events parser (the WHATWG rules: CR, LF or CRLF line ends, "field: value",
  // comments, multi-line data); calls dispatch({id, event, data}) for each complete event.
  function sseParser(dispatch) {
    let buf = "";
    let data = [];
    let kind = "";
    let lastId = null;
    function line(l) {
      if (l === "") {
        if (data.length) dispatch({ id: lastId, event: kind || "message", data: data.join("\n") });
        data = [];
        kind = "";
        return;
      }
      if (l[0] === ":") return; // a comment: the keep-alive
      const colon = l.indexOf(":");
      const field = colon === -1 ? l : l.slice(0, colon);
      let value = colon === -1 ? "" : l.slice(colon + 1);
      if (value[0] === " ") value = value.slice(1);
      if (field === "data") data.push(value);
      else if (field === "event") kind = value;
      else if (field === "id" && !value.includes("\0")) lastId = value;
    }
    return (text) => {
      buf += text;
      let pos = 0;
      while (pos < buf.length) {
        const lf = buf.indexOf("\n", pos);
        const cr = buf.indexOf("\r", pos);
        let end;
        let next;
        if (cr !== -1 && (lf === -1 || cr < lf)) {
          if (cr === buf.length - 1) break; // a CR last: its LF may come in the next chunk
          end = cr;
          next = buf[cr + 1] === "\n" ? cr + 2 : cr + 1;
        } else if (lf !== -1) {
          end = lf;
          next = lf + 1;
        } else break;
        line(buf.slice(pos, end));
        pos = next;
      }
      buf = buf.slice(pos);
    };
  }

  function sleep(ms) {
    return new Promise((r) => setTimeout(r, ms));
  }

  async function streamLoop() {
    for (;;) {
      setConn(conn.lastId ? "reconnecting" : "connecting");
      const ctrl = new AbortController();
      let watchdog = 0;
      const arm = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => ctrl.abort(), SILENCE_MS);
      };
      let why;
      let started = 0;
      try {
        const headers = { Accept: "text/event-stream" };
        if (conn.lastId) headers["Last-Event-ID"] = conn.lastId;
        const resp = await api("/admin/events", { headers, signal: ctrl.signal });
        if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}: ${(await errorOf(resp)).message}`);
        started = Date.now();
        setConn("live");
        arm();
        const reader = resp.body.getReader();
        const decoder = new TextDecoder();
        const feed = sseParser(onEvent);
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          arm();
          feed(decoder.decode(value, { stream: true }));
        }
        why = "the gateway ended the stream";
      } catch (err) {
        why = ctrl.signal.aborted ? `no data for ${SILENCE_MS / 1000} s` : String((err && err.message) || err);
      } finally {
        clearTimeout(watchdog);
        ctrl.abort();
      }
      if (started && Date.now() - started > STEADY_MS) conn.attempt = 0;
      const delay = BACKOFF_MS[Math.min(conn.attempt, BACKOFF_MS.length - 1)];
      conn.attempt += 1;
      note("stream", `event stream lost (${why}); reconnecting in ${Math.ceil(delay / 1000)} s`);
      setConn("retrying", why, Date.now() + delay);
      await sleep(delay);
    }
  }

  function onEvent(ev) {
    let data;
    try {
      data = JSON.parse(ev.data);
    } catch {
      note("stream", `an unreadable ${ev.event} event was skipped`);
      return;
    }
    if (ev.id) conn.lastId = ev.id;
    const apply = HANDLERS[ev.event];
    if (apply) apply(data || {});
    else note(ev.event, `${ev.event} event`, data && data.time);
    queueRender();
  }

  // --- applying events ----------------------------------------------------------------------

  function nodeState(n) {
    if (!n.up) return "down";
    return n.failed_polls > 0 ? "degraded" : "up";
  }

  function newModel(id) {
    return {
      id,
      status: "loading",
      devices: [],
      vram_used_mb: null,
      load_progress: 0,
      error: null,
      priority: null,
      footprint_mb: null,
      idle_secs: null,
      draining: false,
      seenAt: Date.now(),
    };
  }

  const HANDLERS = {
    snapshot(d) {
      const first = !fleet.loaded;
      fleet.nodes = new Map();
      for (const n of d.nodes || []) {
        const models = new Map();
        for (const m of n.models || []) models.set(m.id, { ...m, seenAt: Date.now() });
        fleet.nodes.set(n.name, { ...n, state: nodeState(n), reason: null, restart: null, models });
      }
      fleet.catalogue = d.catalogue || [];
      fleet.aliases = d.aliases || {};
      fleet.stats = d.stats || {};
      fleet.waiting = d.waiting || {};
      fleet.loaded = true;
      const models = [...fleet.nodes.values()].reduce((k, n) => k + n.models.size, 0);
      note(
        "snapshot",
        `${first ? "connected" : "fresh snapshot"}: ${fleet.nodes.size} neuron(s), ${models} resident model(s)`,
        d.time,
      );
    },

    neuron(d) {
      const node = fleet.nodes.get(d.node);
      if (node) {
        node.state = d.state;
        node.up = d.state !== "down";
        node.reason = d.reason || null;
        if (d.state === "up") node.failed_polls = 0;
        refreshSoon();
      }
      const why = d.reason ? ` (${d.reason})` : "";
      note("neuron", `${d.node} is ${d.state}${why}`, d.time, d.state);
    },

    health(d) {
      const node = fleet.nodes.get(d.node);
      if (node) node.health = d.health;
    },

    model(d) {
      const node = fleet.nodes.get(d.node);
      const key = `${d.node}/${d.model}`;
      let m = node ? node.models.get(d.model) : null;
      const was = m ? m.status : null;
      const room = d.needed_by ? `, room for ${d.needed_by}` : "";
      const why = d.reason ? ` (${d.reason}${room})` : "";
      switch (d.state) {
        case "loading":
          // A model being unloaded may be listed as loading by its neuron: its end comes as
          // "evicted" or "unloaded"; a new load starts from a model that is gone.
          if (m && m.status === "unloading") return;
          if (node && !m) node.models.set(d.model, (m = newModel(d.model)));
          if (m) {
            m.status = "loading";
            m.load_progress = d.progress ?? 0;
          }
          if (was !== "loading") {
            note("model", `loading ${d.model} on ${d.node}`, d.time, "loading");
            refreshSoon(); // its devices, footprint and priority
          }
          return;
        case "loaded":
          if (node && !m) node.models.set(d.model, (m = newModel(d.model)));
          if (m) {
            Object.assign(m, { status: "loaded", load_progress: 1, error: null, draining: false });
            m.vram_used_mb = d.vram_used_mb ?? m.vram_used_mb;
            m.devices = d.devices || [];
            m.idle_secs = 0;
            m.seenAt = Date.now();
          }
          note("model", `${d.model} loaded on ${d.node}${placeText(d)}`, d.time, "loaded");
          settleNotice(d.model);
          refreshSoon();
          return;
        case "failed":
          if (node && !m) node.models.set(d.model, (m = newModel(d.model)));
          if (m) Object.assign(m, { status: "failed", error: d.error || "the load failed" });
          note("model", `${d.model} failed on ${d.node}: ${d.error || "no reason given"}`, d.time, "failed");
          settleNotice(d.model);
          refreshSoon();
          return;
        case "unloading":
          if (m) Object.assign(m, { status: "unloading", draining: true });
          note("model", `unloading ${d.model} from ${d.node}${why}`, d.time, "unloading");
          return;
        case "evicted":
          if (node) node.models.delete(d.model);
          confirmFor.delete(key);
          note("model", `evicted ${d.model} from ${d.node}${why}`, d.time, "evicted");
          refreshSoon();
          return;
        case "unloaded":
          if (node) node.models.delete(d.model);
          confirmFor.delete(key);
          {
            const by = d.reason === "admin" ? " (operator)" : why || " (gone from the neuron)";
            note("model", `${d.model} unloaded from ${d.node}${by}`, d.time, "unloaded");
          }
          refreshSoon();
          return;
        default:
          note("model", `${d.model} on ${d.node}: ${d.state}`, d.time, d.state);
      }
    },

    restart(d) {
      const node = fleet.nodes.get(d.node);
      if (node) node.restart = d.state === "restarting" ? "restarting" : null;
      const text = {
        restarting: `restarting ${d.node} to defragment${d.cycles ? ` after ${d.cycles} load/unload cycles` : ""}`,
        restarted: `${d.node} restarted`,
        failed: `restart of ${d.node} failed: ${d.error || "no reason given"}`,
      }[d.state];
      note("restart", text || `${d.node}: restart ${d.state}`, d.time, d.state);
      refreshSoon();
    },

    failover(d) {
      const to = d.to ? ` for ${d.to}` : "";
      note("failover", `a request for ${d.model} left ${d.node}${to}: ${d.error || "no reason given"}`, d.time);
    },

    stats(d) {
      const before = fleet.stats;
      fleet.stats = d.models || {};
      for (const [model, s] of Object.entries(fleet.stats)) {
        const was = before[model];
        // requests came or went: the idle clocks and the per-neuron in-flight counts moved
        if (!was || was.requests !== s.requests || was.in_flight !== s.in_flight) refreshSoon();
      }
    },
  };

  function placeText(d) {
    const where = d.devices && d.devices.length ? `GPU ${d.devices.join("+")}` : "host memory";
    return d.vram_used_mb ? ` (${fmtMb(d.vram_used_mb)} on ${where})` : "";
  }

  // Fills in what events do not carry (footprints, priorities, idle clocks, busy) from
  // /admin/fleet; what is resident and in which state stays the events' business.
  let refreshTimer = 0;
  function refreshSoon() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(async () => {
      try {
        const resp = await api("/admin/fleet");
        if (resp.ok) mergeView(await resp.json());
      } catch {
        /* the stream's reconnect reports the gateway unreachable */
      } finally {
        refreshTimer = 0;
      }
    }, REFRESH_MS);
  }

  const DERIVED = ["priority", "footprint_mb", "idle_secs", "quant", "context_length", "harness", "queued"];

  function mergeView(view) {
    const now = Date.now();
    for (const n of view.nodes || []) {
      const node = fleet.nodes.get(n.name);
      if (!node) continue;
      if (n.discovery) node.discovery = n.discovery;
      node.busy = n.busy;
      node.cycles = n.cycles;
      node.in_flight = n.in_flight || {};
      for (const m of n.models || []) {
        const mine = node.models.get(m.id);
        if (!mine) continue;
        for (const k of DERIVED) mine[k] = m[k];
        if (!(mine.devices && mine.devices.length) && m.devices) mine.devices = m.devices;
        if (mine.vram_used_mb === null || mine.vram_used_mb === undefined) mine.vram_used_mb = m.vram_used_mb;
        mine.seenAt = now;
      }
    }
    fleet.waiting = view.waiting || {};
    queueRender();
    // an operation in progress (a load's bookkeeping, a drain, requests waiting): look again soon
    const active = (view.nodes || []).some((n) => n.busy) || Object.keys(fleet.waiting).length > 0;
    if (active) setTimeout(refreshSoon, FOLLOW_MS);
  }

  // --- actions ------------------------------------------------------------------------------

  // A line above the fleet about the operator's last action; "about" names the model it concerns,
  // so the news of that model's load ending takes it away.
  function showNotice(text, kind = "info", about = null) {
    const el = $("notice");
    setText(el, text);
    el.dataset.kind = kind;
    el.dataset.about = about || "";
    el.hidden = false;
    clearTimeout(showNotice.timer);
    showNotice.timer = setTimeout(() => (el.hidden = true), kind === "error" ? 12000 : 6000);
  }

  function settleNotice(model) {
    const el = $("notice");
    if (!el.hidden && el.dataset.about === model) el.hidden = true;
  }

  async function unload(node, model, force) {
    const key = `${node}/${model}`;
    pending.add(`unload:${key}`);
    queueRender();
    try {
      const resp = await api("/admin/models/unload", { method: "POST", body: { model, node, force } });
      if (resp.status === 409) {
        const err = await errorOf(resp);
        if (err.code === "model_busy" && !force) {
          confirmFor.set(key, err.message);
          return;
        }
        showNotice(`Could not unload ${model} from ${node}: ${err.message}`, "error");
        return;
      }
      if (!resp.ok) {
        showNotice(`Could not unload ${model} from ${node}: ${(await errorOf(resp)).message}`, "error");
        return;
      }
      confirmFor.delete(key);
      showNotice(`Unloaded ${model} from ${node}.`);
    } catch (err) {
      showNotice(`Could not unload ${model} from ${node}: ${err.message || err}`, "error");
    } finally {
      pending.delete(`unload:${key}`);
      queueRender();
    }
  }

  async function load(model, node) {
    pending.add(`load:${model}`);
    queueRender();
    try {
      const resp = await api("/admin/models/load", {
        method: "POST",
        body: { model, node: node || undefined, wait: false },
      });
      if (!resp.ok) {
        showNotice(`Could not load ${model}: ${(await errorOf(resp)).message}`, "error");
        return;
      }
      showNotice(`Loading ${model}${node ? ` on ${node}` : ""}…`, "info", model);
    } catch (err) {
      showNotice(`Could not load ${model}: ${err.message || err}`, "error");
    } finally {
      pending.delete(`load:${model}`);
      queueRender();
    }
  }

  // --- the event log ------------------------------------------------------------------------

  function note(kind, text, time, state) {
    const log = $("log");
    const li = h(
      "li",
      { "data-kind": kind, "data-state": state },
      h("time", { text: fmtClock(time) }),
      h("span", { class: "kind", text: kind }),
      h("span", { class: "text", text }),
    );
    log.prepend(li);
    while (log.children.length > LOG_CAP) log.lastElementChild.remove();
    setText($("log-count"), String(log.children.length));
  }

  // --- rendering ----------------------------------------------------------------------------

  function setConn(state, detail = "", retryAt = 0) {
    conn.state = state;
    conn.detail = detail;
    conn.retryAt = retryAt;
    renderConn();
  }

  function renderConn() {
    const el = $("conn");
    el.dataset.state = conn.state;
    let text = {
      connecting: "connecting…",
      reconnecting: "reconnecting…",
      live: "live",
      auth: "admin key needed",
    }[conn.state];
    if (conn.state === "retrying") {
      const secs = Math.max(0, Math.ceil((conn.retryAt - Date.now()) / 1000));
      text = `offline · retry in ${secs} s`;
    }
    setText(el.querySelector(".label"), text || conn.state);
    setAttr(el, "title", conn.detail || null);
  }

  let renderQueued = false;
  function queueRender() {
    if (renderQueued) return;
    renderQueued = true;
    setTimeout(() => {
      renderQueued = false;
      render();
    }, 30);
  }

  function render() {
    renderConn();
    const empty = $("nodes-empty");
    $("catalogue-panel").hidden = !fleet.loaded;
    if (!fleet.loaded) {
      setText(empty, conn.state === "auth" ? "The fleet shows once the gateway accepts a key." : "Waiting for the fleet…");
      empty.hidden = false;
      return;
    }
    const nodes = [...fleet.nodes.values()];
    sync($("nodes"), nodes, (n) => n.name, createNode, updateNode);
    setText(empty, "No neurons configured.");
    empty.hidden = nodes.length > 0;
    renderCatalogue();
    renderSummary(nodes);
  }

  function renderSummary(nodes) {
    const up = nodes.filter((n) => n.state !== "down").length;
    let loaded = 0;
    let loading = 0;
    for (const n of nodes)
      for (const m of n.models.values()) {
        if (m.status === "loaded") loaded += 1;
        if (m.status === "loading") loading += 1;
      }
    const parts = [`${up}/${nodes.length} neurons up`, `${loaded} loaded`];
    if (loading) parts.push(`${loading} loading`);
    setText($("summary"), parts.join(" · "));
  }

  function createNode(n) {
    const el = h("article", { class: "card node", "data-node": n.name });
    const p = {
      name: h("h3", { class: "name", text: n.name }),
      state: h("span", { class: "badge", "data-role": "state" }),
      endpoint: h("span", { class: "endpoint", "data-role": "endpoint" }),
      host: h("span", { class: "host", "data-role": "host" }),
      note: h("p", { class: "note", "data-role": "note" }),
      devices: h("div", { class: "devices", "data-role": "devices" }),
      hostmem: h("p", { class: "hostmem", "data-role": "host-memory" }),
      models: h("ul", { class: "models", "data-role": "models" }),
      none: h("p", { class: "empty", text: "No models resident." }),
    };
    el.append(
      h(
        "header",
        { class: "card-head" },
        h("div", { class: "title" }, p.name, p.state),
        h("div", { class: "meta" }, p.host, p.endpoint),
      ),
      p.note,
      p.devices,
      p.hostmem,
      p.models,
      p.none,
    );
    el.parts = p;
    return el;
  }

  function updateNode(el, n) {
    const p = el.parts;
    const state = n.restart === "restarting" ? "restarting" : n.state;
    el.dataset.state = state;
    setText(p.state, state);
    p.state.dataset.state = state;
    setText(p.endpoint, n.endpoint);
    const d = n.discovery;
    const hostBits = [];
    if (d) {
      hostBits.push(d.hostname);
      const names = {};
      for (const dev of d.devices || []) names[dev.name] = (names[dev.name] || 0) + 1;
      const gpus = Object.entries(names).map(([name, k]) => `${k}× ${name}`);
      hostBits.push(gpus.length ? gpus.join(", ") : `CPU only, ${d.cpu ? d.cpu.cores : "?"} cores`);
      if (d.cuda_version) hostBits.push(`CUDA ${d.cuda_version}`);
    } else hostBits.push("not discovered yet");
    if (n.health) hostBits.push(`up ${fmtSecs(n.health.uptime_secs)}`);
    setText(p.host, hostBits.join(" · "));

    const notes = [];
    if (n.state !== "up" && n.reason) notes.push(n.reason);
    if (n.busy) notes.push(`busy: ${n.busy}`);
    if (n.restart === "restarting") notes.push("restarting to defragment memory");
    setText(p.note, notes.join(" · "));
    p.note.hidden = notes.length === 0;

    const devices = deviceRows(n);
    sync(p.devices, devices, (r) => r.key, createDevice, updateDevice);
    const hostmem = hostMemoryText(n, devices);
    setText(p.hostmem, hostmem);
    p.hostmem.hidden = !hostmem;

    const models = [...n.models.values()];
    sync(p.models, models, (m) => m.id, (m) => createModel(n, m), (row, m) => updateModel(row, n, m));
    p.none.hidden = models.length > 0;
  }

  // One row per GPU (or the host's memory on a CPU-only neuron): used memory split by the
  // models on it, the rest of used memory as "other", free as what is left of the total.
  function deviceRows(n) {
    const d = n.discovery;
    const health = n.health;
    const gpus = d && d.devices ? d.devices : [];
    const models = [...n.models.values()];
    const share = (m) => {
      const mb = m.vram_used_mb ?? (m.status === "loading" ? m.footprint_mb : null);
      return mb ? mb / Math.max(1, (m.devices || []).length) : 0;
    };
    const rows = [];
    if (gpus.length || (health && health.devices && health.devices.length)) {
      const list = gpus.length ? gpus : health.devices.map((x) => ({ index: x.index, name: "GPU" }));
      for (const dev of list) {
        const reading = health ? (health.devices || []).find((x) => x.index === dev.index) : null;
        const total = dev.vram_total_mb ?? (reading ? reading.vram_used_mb + reading.vram_free_mb : 0);
        const on = models.filter((m) => (m.devices || []).includes(dev.index));
        rows.push({
          key: `gpu${dev.index}`,
          label: `GPU ${dev.index} · ${dev.name}`,
          total,
          used: reading ? reading.vram_used_mb : null,
          segments: on.map((m) => ({ model: m.id, mb: share(m), loading: m.status !== "loaded" })),
          util: reading ? reading.utilization_pct : null,
          temp: reading ? reading.temp_c : null,
          index: dev.index,
        });
      }
      return rows;
    }
    const total = d && d.cpu ? d.cpu.memory_total_mb : null;
    const free = health ? health.memory_free_mb : null;
    const on = models.filter((m) => !(m.devices || []).length);
    rows.push({
      key: "host",
      label: "host memory",
      total: total ?? (free ?? 0),
      used: total !== null && free !== null ? total - free : null,
      segments: on.map((m) => ({ model: m.id, mb: share(m), loading: m.status !== "loaded" })),
      util: null,
      temp: null,
      index: "host",
    });
    return rows;
  }

  function hostMemoryText(n, rows) {
    if (!n.health || rows.some((r) => r.key === "host")) return "";
    const total = n.discovery && n.discovery.cpu ? n.discovery.cpu.memory_total_mb : null;
    return `host memory ${fmtMb(n.health.memory_free_mb)} free${total ? ` of ${fmtMb(total)}` : ""}`;
  }

  function createDevice(r) {
    const el = h("div", { class: "device", "data-device": r.index });
    const p = {
      label: h("span", { class: "dlabel" }),
      nums: h("span", { class: "dnums", "data-role": "memory" }),
      bar: h("div", { class: "bar", role: "img" }),
      util: h("span", { "data-role": "util" }),
      temp: h("span", { "data-role": "temp" }),
      free: h("span", { "data-role": "free" }),
    };
    el.append(
      h("div", { class: "dhead" }, p.label, p.nums),
      p.bar,
      h("div", { class: "dfoot" }, p.free, p.util, p.temp),
    );
    el.parts = p;
    return el;
  }

  function updateDevice(el, r) {
    const p = el.parts;
    setText(p.label, r.label);
    const total = Math.max(1, r.total || 0);
    const modelsMb = r.segments.reduce((k, s) => k + s.mb, 0);
    const used = r.used === null ? modelsMb : Math.max(r.used, modelsMb);
    const other = Math.max(0, used - modelsMb);
    const free = Math.max(0, (r.total || 0) - used);
    setText(p.nums, r.used === null ? `? / ${fmtMb(r.total)}` : `${fmtMb(used)} / ${fmtMb(r.total)}`);
    const segs = r.segments.filter((s) => s.mb > 0).map((s) => ({ ...s, key: `m:${s.model}` }));
    if (other > 0) segs.push({ key: "other", model: null, mb: other, loading: false });
    sync(
      p.bar,
      segs,
      (s) => s.key,
      (s) => h("span", { class: "seg", "data-segment": s.model === null ? "other" : s.model }),
      (seg, s) => {
        const pct = Math.min(100, (100 * s.mb) / total);
        seg.style.width = `${pct.toFixed(2)}%`;
        if (s.model !== null) seg.style.setProperty("--c", colourOf(s.model));
        seg.classList.toggle("loading", !!s.loading);
        setAttr(seg, "title", `${s.model === null ? "other" : s.model}: ${fmtMb(s.mb)}`);
      },
    );
    const parts = r.segments.map((s) => `${s.model} ${fmtMb(s.mb)}`);
    if (other > 0) parts.push(`other ${fmtMb(other)}`);
    parts.push(`free ${fmtMb(free)}`);
    setAttr(p.bar, "aria-label", `${r.label}: ${parts.join(", ")}`);
    setText(p.free, r.used === null ? "no reading" : `${fmtMb(free)} free`);
    setText(p.util, r.util === null || r.util === undefined ? "" : `${r.util}% util`);
    setText(p.temp, r.temp === null || r.temp === undefined ? "" : `${r.temp} °C`);
  }

  function createModel(n, m) {
    const key = `${n.name}/${m.id}`;
    const el = h("li", { class: "model", "data-model": m.id });
    const p = {
      swatch: h("span", { class: "swatch", "aria-hidden": "true" }),
      name: h("span", { class: "mname", text: m.id }),
      status: h("span", { class: "badge", "data-role": "status" }),
      placement: h("span", { class: "placement", "data-role": "placement" }),
      unload: h("button", { type: "button", class: "small", "data-role": "unload", text: "Unload" }),
      progressRow: h("div", { class: "progress-row" }),
      progress: h("progress", { max: "1", value: "0", "data-role": "progress" }),
      pct: h("span", { class: "pct" }),
      facts: h("dl", { class: "facts" }),
      error: h("p", { class: "error", "data-role": "error" }),
      confirm: h("div", { class: "confirm", "data-role": "confirm" }),
      confirmText: h("p", {}),
      force: h("button", { type: "button", class: "small danger", "data-role": "force" }),
      cancel: h("button", { type: "button", class: "small", "data-role": "cancel", text: "Keep it" }),
    };
    p.swatch.style.setProperty("--c", colourOf(m.id));
    p.unload.addEventListener("click", () => unload(n.name, m.id, false));
    p.force.addEventListener("click", () => unload(n.name, m.id, true));
    p.cancel.addEventListener("click", () => {
      confirmFor.delete(key);
      queueRender();
    });
    p.progressRow.append(p.progress, p.pct);
    p.confirm.append(p.confirmText, h("div", { class: "row" }, p.force, p.cancel));
    el.append(
      h("div", { class: "mhead" }, p.swatch, p.name, p.unload),
      h("div", { class: "msub" }, p.status, p.placement),
      p.progressRow,
      p.facts,
      p.error,
      p.confirm,
    );
    el.parts = p;
    return el;
  }

  function fact(label, value, role) {
    return { label, value, role };
  }

  function updateModel(el, n, m) {
    const p = el.parts;
    const key = `${n.name}/${m.id}`;
    const health = n.health && n.health.models ? n.health.models[m.id] : null;
    const status = m.draining || (health && health.status === "unloading") ? "unloading" : m.status;
    el.dataset.status = status;
    setText(p.status, status);
    p.status.dataset.state = status;

    const loading = status === "loading";
    p.progressRow.hidden = !loading;
    if (loading) {
      const v = Math.max(0, Math.min(1, Number(m.load_progress) || 0));
      if (p.progress.value !== v) p.progress.value = v;
      setText(p.pct, `${Math.round(v * 100)}%`);
    }

    const unloading = pending.has(`unload:${key}`);
    p.unload.hidden = status === "unloading";
    p.unload.disabled = unloading;
    setText(p.unload, unloading && !confirmFor.has(key) ? "Unloading…" : "Unload");

    const inFlight = Math.max(health ? health.in_flight : 0, (n.in_flight || {})[m.id] || 0);
    const queued = health ? health.queued : m.queued || 0;
    const s = fleet.stats[m.id] || {};
    const tps = s.tokens_per_second || {};
    const ttft = s.ttft_seconds || {};
    let idle = "–";
    if (inFlight > 0) idle = "busy";
    else if (m.idle_secs !== null && m.idle_secs !== undefined) {
      idle = fmtSecs(m.idle_secs + (Date.now() - m.seenAt) / 1000);
    }
    const onGpu = m.devices && m.devices.length;
    const where = onGpu ? `GPU ${m.devices.join("+")}` : "host memory";
    let placed = "";
    if (status === "loading") placed = onGpu ? `on ${where}` : "";
    else if (m.vram_used_mb) placed = `${fmtMb(m.vram_used_mb)} on ${where}`;
    else if (status !== "failed") placed = `on ${where}`;
    if (m.quant) placed += ` · ${m.quant}`;
    setText(p.placement, placed);
    const facts = [
      fact("footprint", fmtMb(m.footprint_mb), "footprint"),
      fact("priority", m.priority ?? "–", "priority"),
      fact("in flight", inFlight, "in-flight"),
      fact("queued", queued, "queued"),
      fact("idle", idle, "idle"),
      fact("tok/s", fmtNum(tps.recent ?? tps.mean, 1), "tps"),
      fact("TTFT", ttft.recent ?? ttft.mean ? `${fmtNum(ttft.recent ?? ttft.mean, 2)} s` : "–", "ttft"),
    ];
    facts.push(fact("context", m.context_length ?? "–", "context"));
    sync(
      p.facts,
      facts,
      (f) => f.role,
      (f) => {
        const dt = h("dt", { text: f.label });
        const dd = h("dd", {});
        const wrap = h("div", { "data-role": f.role }, dt, dd);
        wrap.parts = { dd };
        return wrap;
      },
      (wrap, f) => setText(wrap.parts.dd, f.value),
    );

    setText(p.error, status === "failed" ? m.error : "");
    p.error.hidden = status !== "failed";

    const ask = confirmFor.get(key);
    p.confirm.hidden = !ask;
    if (ask) {
      setText(p.confirmText, ask);
      p.force.disabled = unloading;
      setText(p.force, unloading ? "Waiting for them…" : "Unload when they finish");
    }
  }

  function renderCatalogue() {
    const names = [...fleet.nodes.keys()];
    const residentOn = {};
    for (const n of fleet.nodes.values()) {
      for (const m of n.models.values()) {
        (residentOn[m.id] = residentOn[m.id] || []).push({ node: n.name, status: m.status });
      }
    }
    const tbody = $("catalogue");
    sync(
      tbody,
      fleet.catalogue,
      (c) => c.id,
      (c) => {
        const tr = h("tr", { "data-catalogue": c.id });
        const p = {
          id: h("td", { class: "cid" }),
          where: h("td", { class: "where", "data-role": "where" }),
          act: h("td", { class: "actions" }),
          node: h("select", { "data-role": "load-node", "aria-label": `neuron for ${c.id}` }),
          load: h("button", { type: "button", class: "small primary", "data-role": "load", text: "Load" }),
          nodesKey: "",
        };
        p.load.addEventListener("click", () => load(c.id, p.node.value));
        p.act.append(h("div", { class: "load-control" }, p.node, p.load));
        tr.append(p.id, p.where, p.act);
        tr.parts = p;
        return tr;
      },
      (tr, c) => {
        const p = tr.parts;
        const gpus = c.min_devices === 1 ? "1 GPU" : `${c.min_devices} GPUs`;
        const needs = `${c.min_devices ? gpus : "CPU"} · prio ${c.priority ?? "–"}`;
        if (p.needs !== needs) {
          const swatch = h("span", { class: "swatch", "aria-hidden": "true" });
          swatch.style.setProperty("--c", colourOf(c.id));
          p.id.replaceChildren(
            h("div", { class: "cline" }, swatch, h("span", { class: "mname", text: c.id })),
            h("div", { class: "dim", "data-role": "needs", text: needs }),
          );
          p.needs = needs;
        }
        const on = residentOn[c.id] || [];
        const waiting = fleet.waiting[c.id] || 0;
        const where = on.map((r) => (r.status === "loaded" ? r.node : `${r.node} (${r.status})`));
        if (waiting) where.push(`${waiting} waiting`);
        setText(p.where, where.length ? where.join(", ") : "—");
        const resident = on.some((r) => r.status !== "failed");
        p.act.hidden = false;
        p.act.firstChild.hidden = resident;
        if (p.nodesKey !== names.join("\n")) {
          const keep = p.node.value;
          const options = names.map((name) => h("option", { value: name, text: name }));
          p.node.replaceChildren(h("option", { value: "", text: "any neuron" }), ...options);
          p.node.value = names.includes(keep) ? keep : "";
          p.nodesKey = names.join("\n");
        }
        const busy = pending.has(`load:${c.id}`);
        p.load.disabled = busy;
        setText(p.load, busy ? "Loading…" : "Load");
      },
    );
    $("catalogue-empty").hidden = fleet.catalogue.length > 0;
    const aliases = Object.entries(fleet.aliases || {});
    const el = $("aliases");
    setText(el, aliases.length ? `aliases: ${aliases.map(([a, t]) => `${a} → ${t}`).join(", ")}` : "");
    el.hidden = aliases.length === 0;
  }

  // --- start --------------------------------------------------------------------------------

  function start() {
    $("auth").addEventListener("submit", onKeySubmit);
    $("notice").addEventListener("click", () => ($("notice").hidden = true));
    setInterval(render, 1000); // idle clocks, uptimes, the retry countdown
    streamLoop();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
