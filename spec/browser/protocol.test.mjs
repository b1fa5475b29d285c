// The browser client in real headless Chromium against a small node server that
// speaks the message_bus HTTP protocol as COMPAT.md §3 specifies it (real
// chunked transfer encoding, "\r\n|\r\n" records, first chunk "[]", /__status).
// It checks what fake XHRs cannot: real XHR progress events, real aborts.
// Runs without the Ruby middleware: spec/browser/run protocol.test.mjs
import test from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { CHROMIUM_ARGS } from "./helpers.mjs";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const SEP = "\r\n|\r\n";

function fakeBus({ holdMs = 3000 } = {}) {
  const channels = new Map(); // channel -> [{id, data}]
  let globalId = 0;
  const parked = new Set();
  const log = [];

  const lastId = (c) => {
    const list = channels.get(c) || [];
    return list.length ? list[list.length - 1].id : 0;
  };

  function backlog(subs) {
    const out = [];
    const status = {};
    for (const [c, r] of subs) {
      const b = lastId(c);
      if (r === -1 || r > b) status[c] = b;
      else if (r < -1 || r < b) {
        const start = r < -1 ? Math.max(0, b + r + 1) : r;
        for (const m of channels.get(c) || []) {
          if (m.id > start) out.push({ global_id: m.id, message_id: m.id, channel: c, data: m.data });
        }
      }
    }
    if (Object.keys(status).length) out.push({ global_id: -1, message_id: -1, channel: "/__status", data: status });
    return out;
  }

  function publish(channel, data) {
    const id = ++globalId;
    if (!channels.has(channel)) channels.set(channel, []);
    channels.get(channel).push({ id, data });
    const msg = [{ global_id: id, message_id: id, channel, data }];
    for (const conn of [...parked]) {
      if (!conn.subs.has(channel)) continue;
      if (conn.chunked) conn.res.write(JSON.stringify(msg) + SEP);
      else {
        conn.finish(JSON.stringify(msg));
      }
    }
    return id;
  }

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    if (url.pathname === "/") {
      res.writeHead(200, { "content-type": "text/html" });
      res.end('<!doctype html><script src="/assets/message-bus.js"></script><script src="/assets/message-bus-ajax.js"></script>');
      return;
    }
    if (url.pathname.startsWith("/assets/")) {
      res.writeHead(200, { "content-type": "application/javascript" });
      res.end(fs.readFileSync(path.join(ROOT, "assets", path.basename(url.pathname))));
      return;
    }
    const m = url.pathname.match(/^\/message-bus\/([^/]+)/);
    if (!m) {
      res.writeHead(404).end("not found");
      return;
    }
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      const subs = new Map();
      for (const [k, v] of new URLSearchParams(body)) if (k !== "__seq") subs.set(k, v === "" ? lastId(k) : parseInt(v, 10));
      const longPoll = !url.search.includes("dlp=t");
      const chunked = longPoll && !req.headers["dont-chunk"];
      log.push({ chunked, longPoll, body, headers: req.headers });
      const json = { "content-type": "application/json; charset=utf-8", "cache-control": "must-revalidate, private, max-age=0" };
      const first = backlog(subs);
      if ((first.length && !chunked) || !longPoll) {
        res.writeHead(200, json).end(JSON.stringify(first));
        return;
      }
      const conn = { subs, chunked, res };
      parked.add(conn);
      const timer = setTimeout(() => conn.finish(chunked ? null : "[]"), holdMs);
      conn.finish = (payload) => {
        if (!parked.delete(conn)) return;
        clearTimeout(timer);
        if (chunked) res.end("[]" + SEP);
        else res.writeHead(200, json).end(payload);
      };
      res.on("close", () => conn.finish(null)); // client went away
      if (chunked) {
        res.writeHead(200, {
          "content-type": "text/plain; charset=utf-8",
          "x-content-type-options": "nosniff",
          "cache-control": "must-revalidate, private, max-age=0",
        });
        res.write(JSON.stringify(first) + SEP); // "[]" when nothing is pending
      }
    });
  });
  return { server, publish, log, parked };
}

async function setup(t, opts) {
  const bus = fakeBus(opts);
  await new Promise((r) => bus.server.listen(0, "127.0.0.1", r));
  t.after(() => {
    for (const c of bus.parked) c.res.destroy();
    bus.server.close();
  });
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: CHROMIUM_ARGS });
  t.after(() => browser.close());
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${bus.server.address().port}/`);
  await page.evaluate(() => {
    window.got = [];
    MessageBus.enableWebSocket = false; // this fake server speaks HTTP only
  });
  return { bus, page };
}

const waitFor = async (fn, ms = 5000) => {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 50));
  }
};

test("streamed messages arrive one by one on a single request", async (t) => {
  const { bus, page } = await setup(t, { holdMs: 4000 });
  bus.publish("/chat", "before");
  await page.evaluate(() => MessageBus.subscribe("/chat", (d, g, m) => window.got.push([d, m])));
  await waitFor(() => bus.parked.size === 1);
  bus.publish("/chat", "one");
  bus.publish("/chat", { from: "bob", body: "see you | later ✓" });
  await new Promise((r) => setTimeout(r, 300));
  bus.publish("/chat", "three");
  const got = await waitFor(async () => {
    const g = await page.evaluate(() => window.got);
    return g.length >= 3 && g;
  });
  assert.deepEqual(got, [["one", 2], [{ from: "bob", body: "see you | later ✓" }, 3], ["three", 4]]);
  assert.equal(bus.log.length, 1, "all on one streaming request");
  assert.equal(bus.log[0].chunked, true);
  assert.equal(bus.log[0].body, "%2Fchat=-1&__seq=1");
  assert.equal(await page.evaluate(() => MessageBus.callbacks[0].last_id), 4);
});

test("after the server closes the stream the next request resumes from the last id", async (t) => {
  const { bus, page } = await setup(t, { holdMs: 800 });
  await page.evaluate(() => {
    MessageBus.callbackInterval = 500; // the stream lasts longer: next request 100 ms after it ends
    MessageBus.subscribe("/c", (d) => window.got.push(d));
  });
  await waitFor(() => bus.parked.size === 1);
  bus.publish("/c", "a");
  await waitFor(() => bus.log.length >= 2, 4000);
  assert.equal(bus.log[1].body, "%2Fc=1&__seq=2");
  assert.deepEqual(await page.evaluate(() => window.got), ["a"]);
});

test("subscribe aborts the open request with status 'abort': no failures counted", async (t) => {
  const { bus, page } = await setup(t, { holdMs: 10000 });
  for (let i = 0; i < 4; i++) {
    await page.evaluate((i) => MessageBus.subscribe("/c" + i, () => {}), i);
    await waitFor(() => bus.log.length === i + 1);
  }
  const d = await page.evaluate(() => MessageBus.diagnostics());
  assert.equal(d.totalAjaxFailures, 0);
  assert.equal(d.recentFailures, 0);
  const sent = [...new URLSearchParams(bus.log[3].body).keys()];
  assert.deepEqual(sent, ["/c0", "/c1", "/c2", "/c3", "__seq"]);
});

test("a non-streamed JSON answer to a streaming request is handled as JSON", async (t) => {
  const { bus, page } = await setup(t);
  bus.publish("/j", "old1");
  bus.publish("/j", "old2");
  // Force the server to answer with a plain JSON body although the client streams:
  bus.server.prependListener("request", (req) => {
    if (req.url.startsWith("/message-bus/")) req.headers["dont-chunk"] = "true";
  });
  await page.evaluate(() => MessageBus.subscribe("/j", (d) => window.got.push(d), 0));
  const got = await waitFor(async () => {
    const g = await page.evaluate(() => window.got);
    return g.length >= 2 && g;
  });
  assert.deepEqual(got, ["old1", "old2"]);
  assert.equal(bus.log[0].headers["dont-chunk"], "true");
});
