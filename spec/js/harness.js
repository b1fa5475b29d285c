"use strict";
// Test harness: loads assets/message-bus.js (and the ajax adapter) into a fresh
// vm context with a fake clock, fake timers, fake XMLHttpRequest, fake document
// and fake localStorage. No server, no network.

const vm = require("node:vm");
const fs = require("node:fs");
const path = require("node:path");

const ASSETS = path.join(__dirname, "..", "..", "assets");
const CLIENT_SRC = fs.readFileSync(path.join(ASSETS, "message-bus.js"), "utf8");
const ADAPTER_SRC = fs.readFileSync(path.join(ASSETS, "message-bus-ajax.js"), "utf8");

const SEP = "\r\n|\r\n";

function createEnv(opts = {}) {
  const {
    hidden = false,
    localStorage: withStorage = true,
    progress = true,
    adapter = true,
    document: withDocument = true,
    webSocket = false,
    group = null, // a createGroupHub(): tabs sharing BroadcastChannel and Web Locks
    location = { protocol: "http:", host: "example.test", pathname: "/chat/room" },
    extraGlobals = {},
  } = opts;

  // ---- clock and timers ----
  const clock = { now: 1_700_000_000_000 };
  let timers = [];
  let nextTimerId = 1;
  function setTimeout(fn, ms) {
    const id = nextTimerId++;
    timers.push({ id, at: clock.now + Math.max(0, Number(ms) || 0), fn });
    return id;
  }
  function clearTimeout(id) {
    timers = timers.filter((t) => t.id !== id);
  }
  function advance(ms) {
    const end = clock.now + ms;
    for (;;) {
      timers.sort((a, b) => a.at - b.at || a.id - b.id);
      const t = timers[0];
      if (!t || t.at > end) break;
      timers.shift();
      clock.now = t.at;
      t.fn();
    }
    clock.now = end;
  }

  // ---- XMLHttpRequest ----
  const requests = [];
  class FakeXHR {
    constructor() {
      if (progress) this.onprogress = null;
      this.onreadystatechange = null;
      this.readyState = 0;
      this.status = 0;
      this.statusText = "";
      this.responseText = "";
      this.requestHeaders = {};
      this.headerOrder = [];
      this.responseHeaders = {};
      this.aborted = false;
      this.sent = false;
    }
    open(method, url) {
      this.method = method;
      this.url = url;
      this.readyState = 1;
    }
    setRequestHeader(name, value) {
      this.requestHeaders[name] = String(value);
      this.headerOrder.push(name);
    }
    send(body) {
      this.body = body;
      this.sent = true;
      this.sentAt = clock.now;
      requests.push(this);
    }
    getResponseHeader(name) {
      if (this.readyState < 2) return null;
      for (const k of Object.keys(this.responseHeaders)) {
        if (k.toLowerCase() === name.toLowerCase()) return this.responseHeaders[k];
      }
      return null;
    }
    abort() {
      this.aborted = true;
      if (this.readyState >= 1 && this.readyState < 4 && this.sent) {
        this.readyState = 4;
        this.status = 0;
        this.statusText = "";
        if (this.onreadystatechange) this.onreadystatechange();
      }
      this.readyState = 0;
    }
    // ---- driven by the tests, playing the server ----
    get done() {
      return this.readyState === 4 || this.aborted;
    }
    get form() {
      return parseForm(this.body);
    }
    headers(headers) {
      this.responseHeaders = headers;
      this.status = 200;
      this.statusText = "OK";
      this.readyState = 2;
      return this;
    }
    stream(text, headers = { "Content-Type": "text/plain; charset=utf-8" }) {
      if (this.readyState < 2) this.headers(headers);
      this.readyState = 3;
      this.responseText += text;
      if (this.onprogress) this.onprogress({ type: "progress" });
      return this;
    }
    end() {
      this.readyState = 4;
      if (this.onreadystatechange) this.onreadystatechange();
      return this;
    }
    respond(status, body = "", headers = { "Content-Type": "application/json; charset=utf-8" }, statusText) {
      this.responseHeaders = headers;
      this.status = status;
      this.statusText = statusText !== undefined ? statusText : status === 200 ? "OK" : "Error";
      this.responseText += body;
      this.readyState = 4;
      if (this.onreadystatechange) this.onreadystatechange();
      return this;
    }
    respondJSON(messages) {
      return this.respond(200, JSON.stringify(messages));
    }
  }

  // ---- document ----
  let document;
  if (withDocument) {
    const listeners = {};
    document = {
      hidden,
      addEventListener(type, fn) {
        (listeners[type] = listeners[type] || []).push(fn);
      },
      removeEventListener(type, fn) {
        listeners[type] = (listeners[type] || []).filter((f) => f !== fn);
      },
      listenerCount(type) {
        return (listeners[type] || []).length;
      },
      setHidden(value) {
        this.hidden = value;
        for (const fn of (listeners.visibilitychange || []).slice()) fn({ type: "visibilitychange" });
      },
    };
  }

  // ---- localStorage ----
  let localStorage;
  const storageLog = [];
  if (withStorage) {
    // Tabs of one browser share one localStorage.
    const data = group ? group.storageData : new Map();
    localStorage = {
      getItem(k) {
        return data.has(k) ? data.get(k) : null;
      },
      setItem(k, v) {
        storageLog.push(["set", k, String(v)]);
        data.set(k, String(v));
      },
      removeItem(k) {
        storageLog.push(["remove", k]);
        data.delete(k);
      },
      keys() {
        return [...data.keys()];
      },
    };
  }

  // ---- WebSocket (only when `webSocket: true`) ----
  // Events fire when the test says so: open(), receive(), drop(); close()
  // from the client fires onclose on the next timer turn, as browsers do.
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.sent = [];
      this.readyState = 0;
      this.closedWith = null;
      sockets.push(this);
    }
    send(text) {
      if (this.readyState !== 1) throw new Error("InvalidStateError: not open");
      this.sent.push(JSON.parse(text));
    }
    close(code, reason) {
      if (this.readyState === 3) return;
      this.closedWith = { code, reason };
      this.readyState = 3;
      setTimeout(() => this.onclose && this.onclose({ code: code || 1005, reason: reason || "", wasClean: true }), 0);
    }
    open() {
      this.readyState = 1;
      if (this.onopen) this.onopen({});
    }
    receive(payload) {
      if (this.onmessage) this.onmessage({ data: typeof payload === "string" ? payload : JSON.stringify(payload) });
    }
    drop(code = 1006, reason = "") {
      this.readyState = 3;
      if (this.onerror) this.onerror({});
      if (this.onclose) this.onclose({ code, reason, wasClean: false });
    }
  }

  const logs = [];
  const fakeConsole = {
    log: (...args) => logs.push(args.map(String).join(" ")),
    error: (...args) => logs.push(args.map(String).join(" ")),
    warn: (...args) => logs.push(args.map(String).join(" ")),
  };

  const sandbox = {
    setTimeout,
    clearTimeout,
    XMLHttpRequest: FakeXHR,
    URLSearchParams,
    console: fakeConsole,
    __clock: clock,
    ...extraGlobals,
  };
  const tab = group ? group.tab() : null;
  if (tab) {
    sandbox.BroadcastChannel = tab.BroadcastChannel;
    sandbox.navigator = { locks: tab.locks };
  }
  if (webSocket) {
    sandbox.WebSocket = FakeWebSocket;
    if (location) sandbox.location = location;
  }
  if (document) sandbox.document = document;
  if (localStorage) sandbox.localStorage = localStorage;
  const context = vm.createContext(sandbox);
  vm.runInContext("Date.now = function () { return __clock.now; };", context);

  function load(src, name) {
    vm.runInContext(src, context, { filename: name });
  }
  load(CLIENT_SRC, "message-bus.js");
  if (adapter) load(ADAPTER_SRC, "message-bus-ajax.js");

  const MB = context.MessageBus;

  return {
    MB,
    context,
    clock,
    advance,
    timers: () => timers.slice(),
    requests,
    last: () => requests[requests.length - 1],
    pending: () => requests.filter((r) => !r.done),
    document,
    localStorage,
    storageLog,
    logs,
    FakeXHR,
    sockets,
    socket: () => sockets[sockets.length - 1],
    tab,
    load,
  };
}

// Tabs of one browser: BroadcastChannel and navigator.locks shared by the
// envs made with `group: hub`. Nothing happens until `await hub.settle()`:
// it hands out free locks and delivers posted messages (structured clones,
// never to the sender) until nothing moves. `tab.close()` is a tab going
// away: its channels close and its locks are released.
function createGroupHub() {
  const channels = [];
  const queue = [];
  const locks = new Map(); // name -> { holder, waiters: [{ tab, callback }] }
  const storageData = new Map();
  let tabs = 0;

  function lockState(name) {
    if (!locks.has(name)) locks.set(name, { holder: null, waiters: [] });
    return locks.get(name);
  }

  function tab() {
    const id = ++tabs;
    const mine = { id, closed: false };
    class BroadcastChannel {
      constructor(name) {
        this.name = name;
        this.onmessage = null;
        this.closed = false;
        this.tab = mine;
        channels.push(this);
      }
      postMessage(data) {
        if (this.closed) throw new Error("InvalidStateError: closed");
        const copy = structuredClone(data);
        for (const other of channels) {
          if (other !== this && other.name === this.name && !other.closed) queue.push([other, copy]);
        }
      }
      close() {
        this.closed = true;
      }
    }
    const lockApi = {
      request(name, callback) {
        lockState(name).waiters.push({ tab: mine, callback });
        return new Promise(() => {});
      },
    };
    mine.BroadcastChannel = BroadcastChannel;
    mine.locks = lockApi;
    mine.close = () => {
      mine.closed = true;
      for (const c of channels) if (c.tab === mine) c.closed = true;
      for (const state of locks.values()) {
        state.waiters = state.waiters.filter((w) => w.tab !== mine);
        if (state.holder && state.holder.tab === mine) state.holder = null;
      }
    };
    mine.holds = (name) => [...locks.values()].some((st) => st.holder && st.holder.tab === mine);
    return mine;
  }

  function step() {
    let moved = false;
    for (const state of locks.values()) {
      if (!state.holder && state.waiters.length) {
        const waiter = state.waiters.shift();
        state.holder = waiter;
        moved = true;
        Promise.resolve(waiter.callback()).then(() => {
          if (state.holder === waiter) state.holder = null;
        });
      }
    }
    while (queue.length) {
      const [channel, data] = queue.shift();
      moved = true;
      if (!channel.closed && channel.onmessage) channel.onmessage({ data });
    }
    return moved;
  }

  async function settle() {
    for (let i = 0; i < 200; i++) {
      const moved = step();
      await new Promise((r) => setImmediate(r));
      if (!moved && !step()) return;
    }
    throw new Error("the tabs never settled");
  }

  return { tab, settle, storageData };
}

function parseForm(body) {
  if (typeof body !== "string" || body === "") return [];
  return body.split("&").map((pair) => {
    const i = pair.indexOf("=");
    const dec = (s) => decodeURIComponent(s.replace(/\+/g, " "));
    return [dec(pair.slice(0, i)), dec(pair.slice(i + 1))];
  });
}

function msg(channel, message_id, data, global_id) {
  return { global_id: global_id === undefined ? message_id : global_id, message_id, channel, data };
}

function status(map) {
  return { global_id: -1, message_id: -1, channel: "/__status", data: map };
}

function record(messages) {
  return JSON.stringify(messages) + SEP;
}

module.exports = { createEnv, createGroupHub, parseForm, msg, status, record, SEP, CLIENT_SRC, ADAPTER_SRC, ASSETS };
