// assets/message-bus.js in headless Chromium against the REAL gem: Puma runs
// spec/browser/bus_app.ru (MessageBus::Rack::Middleware, memory backend, the
// Rust-owned hijacked long polls). The server logs every poll it receives
// (GET /log?client=<id>), so each test checks what reached the server, not
// only what the page saw. Timing assertions use the server's clock.
import { describe, test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { execFileSync } from "node:child_process";
import { ROOT, NATIVE_BUILT, startPuma, launchBrowser, waitFor, setHidden } from "./helpers.mjs";

const APP = path.join(ROOT, "spec/browser/bus_app.ru");
const LONG_POLLING_INTERVAL = 1000; // the server's, ms
const skip = !NATIVE_BUILT && "needs the built extension (rake compile)";

let browser;
const contexts = [];
let seq = 0;
const uniq = (name) => `/t/${name}-${++seq}`;

before(async () => {
  if (!skip) browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});
afterEach(async () => {
  while (contexts.length) await contexts.pop().close();
});

// The server holds a long poll 1 s instead of 25 s; pages wait 300 ms instead
// of 15 s (callbackInterval) before re-polling after a poll without data, so
// that the default 15 s does not dominate every test.
// These are the long-poll and poll transports: no WebSocket (websocket.test.mjs).
const PAGE_DEFAULTS = { callbackInterval: 300, enableWebSocket: false };

// Runs in the page before its scripts: notes when each poll request is sent
// (Date.now(), comparable across pages), the client-side view of scheduling.
function recordRequestStarts() {
  window.__starts = [];
  const open = XMLHttpRequest.prototype.open;
  const send = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.open = function (method, url, ...rest) {
    this.__url = String(url);
    return open.call(this, method, url, ...rest);
  };
  XMLHttpRequest.prototype.send = function (...args) {
    if (this.__url.includes("message-bus/")) window.__starts.push({ t: Date.now(), url: this.__url });
    return send.apply(this, args);
  };
}
const starts = (page) => page.evaluate(() => window.__starts);

// ---- helpers bound to one server -------------------------------------------------------

function client(server) {
  const api = {
    async log(page) {
      const id = await page.evaluate(() => MessageBus.clientId);
      return (await fetch(`${server.base}/log?client=${id}`)).json();
    },
    async now() {
      return (await (await fetch(`${server.base}/now`)).json()).t;
    },
    async publish(channel, data, opts = {}) {
      const res = await fetch(`${server.base}/publish`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ channel, data, opts }),
      });
      assert.equal(res.status, 200);
      return res.json();
    },
    // A page of its own (own context: own localStorage), MessageBus options set.
    async open(options = {}, { context, hidden = false, code } = {}) {
      let ctx = context;
      if (!ctx) {
        ctx = await browser.newContext();
        contexts.push(ctx);
      }
      const page = await ctx.newPage();
      page.responses = [];
      page.on("response", (res) => {
        if (res.url().includes("message-bus/")) page.responses.push({ url: res.url(), headers: res.headers() });
      });
      await page.addInitScript(recordRequestStarts);
      await page.goto(`${server.base}/`);
      await page.evaluate((o) => Object.assign(MessageBus, o), { ...PAGE_DEFAULTS, ...options });
      if (code) await page.evaluate(code);
      if (hidden) await setHidden(page, true);
      return page;
    },
  };
  return api;
}

const subscribe = (page, channel, lastId) =>
  page.evaluate(
    ([c, id]) => MessageBus.subscribe(c, (data, g, m) => window.got.push({ channel: c, data, id: m, at: Date.now() }), id),
    [channel, lastId ?? null],
  );

// The client has processed the server's answer for `channel` (its last_id went
// from -1 to the bus's id): from now on nothing published can be missed.
const ready = (page, channel, timeout = 5000) =>
  waitFor(() => page.evaluate((c) => MessageBus.callbacks.some((cb) => cb.channel === c && cb.last_id >= 0), channel), {
    timeout,
    message: `subscription to ${channel} established`,
  });

const got = (page, channel) => page.evaluate((c) => window.got.filter((g) => g.channel === c).map((g) => g.data), channel);

// Waits until `page` received `last` on `channel`, returns everything it received there.
async function receivedUntil(page, channel, last, timeout = 5000) {
  return waitFor(
    async () => {
      const list = await got(page, channel);
      return list.includes(last) && list;
    },
    { timeout, message: `${JSON.stringify(last)} on ${channel}` },
  );
}

// A page publishes through the app (as an application's page would).
const publishFrom = (page, channel, data) =>
  page.evaluate(
    async ([channel, data]) => {
      const res = await fetch("/publish", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ channel, data }) });
      return res.json();
    },
    [channel, data],
  );

const gaps = (times) => times.slice(1).map((t, i) => t - times[i]);

// ---- tests against a server with default routes ---------------------------------------------

describe("browser client against the real middleware", { skip }, () => {
  let server;
  let bus;
  before(async () => {
    server = await startPuma(APP, { env: { MB_LONG_POLLING_INTERVAL: String(LONG_POLLING_INTERVAL) } });
    bus = client(server);
  });
  after(async () => {
    await server?.stop();
  });

  const transports = [
    {
      name: "chunked long polling (default)",
      options: {},
      dlp: false,
      dontChunk: false,
      contentType: "text/plain; charset=utf-8",
    },
    {
      name: "long polling without chunking (enableChunkedEncoding = false)",
      options: { enableChunkedEncoding: false },
      dlp: false,
      dontChunk: true,
      contentType: "application/json; charset=utf-8",
    },
    {
      name: "polling (enableLongPolling = false)",
      options: { enableLongPolling: false, backgroundCallbackInterval: 150 },
      dlp: true,
      dontChunk: true,
      contentType: "application/json; charset=utf-8",
    },
  ];

  for (const tr of transports) {
    test(`two pages exchange messages: ${tr.name}`, async () => {
      const channel = uniq("exchange");
      const alice = await bus.open(tr.options);
      const bob = await bus.open(tr.options);
      await subscribe(alice, channel);
      await subscribe(bob, channel);
      await ready(alice, channel);
      await ready(bob, channel);

      const sent = ["alice: hi", "bob: hello", "alice: how are you?", "bob: fine ✓ | thanks", "alice: bye"];
      for (const [i, text] of sent.entries()) await publishFrom(i % 2 ? bob : alice, channel, text);
      for (const page of [alice, bob]) {
        assert.deepEqual(await receivedUntil(page, channel, "alice: bye"), sent, "each message once, in order");
      }

      for (const page of [alice, bob]) {
        const log = await bus.log(page);
        assert.ok(log.length >= 1);
        for (const req of log) {
          assert.equal(req.method, "POST");
          assert.equal(req.query.includes("dlp=t"), tr.dlp, `dlp=t in ${req.query}`);
          assert.equal(req.dont_chunk, tr.dontChunk, "Dont-Chunk header");
          assert.match(req.body, /^%2Ft%2Fexchange-\d+=-?\d+&__seq=\d+$/);
        }
        // every answer the page got for its polls carried the transport's content type
        assert.ok(page.responses.length >= 1);
        for (const res of page.responses) assert.equal(res.headers["content-type"], tr.contentType);
        if (tr.name.startsWith("chunked")) {
          assert.equal(page.responses[0].headers["transfer-encoding"], "chunked");
          assert.equal(page.responses[0].headers["x-content-type-options"], "nosniff");
        }
      }
      if (tr.name.startsWith("chunked")) {
        // streaming: several messages arrived on one request
        const requests = (await bus.log(alice)).length;
        assert.ok(requests < sent.length, `${requests} requests for ${sent.length} messages`);
      }
    });
  }

  test("a stopped page gets what was published meanwhile on restart, in order, exactly once", async () => {
    const channel = uniq("stopped");
    const page = await bus.open();
    await subscribe(page, channel);
    await ready(page, channel);
    await bus.publish(channel, "m1");
    await receivedUntil(page, channel, "m1");

    await page.evaluate(() => MessageBus.stop());
    const before = (await bus.log(page)).length;
    for (const m of ["m2", "m3", "m4"]) await bus.publish(channel, m);
    assert.equal((await bus.log(page)).length, before, "no request while stopped");

    await page.evaluate(() => MessageBus.start());
    await receivedUntil(page, channel, "m4");
    await bus.publish(channel, "m5");
    assert.deepEqual(await receivedUntil(page, channel, "m5"), ["m1", "m2", "m3", "m4", "m5"]);
    const resumed = (await bus.log(page))[before];
    assert.match(resumed.body, new RegExp(`^${encodeURIComponent(channel)}=\\d+&`), "resumed from its last id, not -1");
  });

  test("a page whose requests are blocked catches up on reconnect, in order, exactly once", async () => {
    const channel = uniq("offline");
    const page = await bus.open({ callbackInterval: 150 });
    const other = await bus.open();
    await subscribe(page, channel);
    await subscribe(other, channel);
    await ready(page, channel);
    await ready(other, channel);
    await publishFrom(other, channel, "m1");
    await receivedUntil(page, channel, "m1");

    // Offline: every new poll of `page` fails at the network level. The one in
    // flight ends at the server's long-polling timeout.
    let blocked = 0;
    await page.route("**/message-bus/**", (route) => {
      blocked++;
      return route.abort("internetdisconnected");
    });
    await waitFor(() => blocked >= 1, { timeout: LONG_POLLING_INTERVAL + 3000, message: "a blocked poll" });
    for (const m of ["m2", "m3", "m4"]) await publishFrom(other, channel, m);
    await waitFor(() => blocked >= 3, { timeout: 5000, message: "more blocked polls" });
    assert.deepEqual(await got(page, channel), ["m1"]);
    const failures = await page.evaluate(() => MessageBus.diagnostics().totalAjaxFailures);
    assert.ok(failures >= 3, `${failures} failures counted`);

    await page.unrouteAll();
    await receivedUntil(page, channel, "m4", 8000);
    await publishFrom(other, channel, "m5");
    assert.deepEqual(await receivedUntil(page, channel, "m5"), ["m1", "m2", "m3", "m4", "m5"]);
    assert.deepEqual(await receivedUntil(other, channel, "m5"), ["m1", "m2", "m3", "m4", "m5"]);
  });

  test("a hidden page switches to background polling (?dlp=t) and back when visible again", async () => {
    const channel = uniq("hidden");
    const page = await bus.open({ backgroundCallbackInterval: 2000, minHiddenPollInterval: 100 });
    await subscribe(page, channel);
    await ready(page, channel);
    assert.ok((await bus.log(page)).every((r) => !r.query.includes("dlp=t")), "visible: long polling");

    const hiddenAt = await setHidden(page, true);
    // the streaming request in flight ends at the server timeout; the next ones poll
    const polls = await waitFor(
      async () => {
        const list = (await starts(page)).filter((r) => r.t > hiddenAt);
        return list.length >= 2 && list;
      },
      { timeout: LONG_POLLING_INTERVAL + 10000, message: "two background polls" },
    );
    for (const r of polls) assert.match(r.url, /\/poll\?dlp=t$/, "hidden: polling");
    // Timers never fire early: a lower bound holds on any machine.
    const g = polls[1].t - polls[0].t;
    assert.ok(g >= 1950, `background polls ${g} ms apart (backgroundCallbackInterval 2000)`);
    await bus.publish(channel, "while hidden");
    await receivedUntil(page, channel, "while hidden", 10000);
    const seen = await bus.log(page);
    assert.ok(seen.filter((r) => r.query === "dlp=t").every((r) => r.dont_chunk), "background polls are not chunked");

    // Visible again, right after a background poll started (the next one is
    // 2 s away): the scheduled poll is cancelled and a long poll starts.
    const count = (await starts(page)).length;
    await waitFor(async () => (await starts(page)).length > count, { timeout: 10000, message: "a background poll" });
    const shownAt = await setHidden(page, false);
    const next = await waitFor(async () => (await starts(page)).find((r) => r.t >= shownAt), {
      timeout: 10000,
      message: "a poll after visibilitychange",
    });
    assert.match(next.url, /\/poll$/, "visible again: the next poll is a long poll, not the scheduled background one");
    await bus.publish(channel, "visible");
    assert.deepEqual(await receivedUntil(page, channel, "visible"), ["while hidden", "visible"]);
  });

  // ---- one test per option ---------------------------------------------------------
// Timings are the page's own request starts (XHR send), which lag the client's
// internal start time by a few ms: lower bounds allow ~5-10 %.

  test("callbackInterval: spacing of long-poll starts when a request brought no data", async () => {
    const channel = uniq("callback-interval");
    const slow = await bus.open({ callbackInterval: 2500 });
    const fast = await bus.open({ callbackInterval: 200 });
    await subscribe(slow, channel);
    await subscribe(fast, channel);
    const [s, f] = await waitFor(
      async () => {
        const s = await starts(slow);
        const f = await starts(fast);
        return s.length >= 2 && f.length >= 3 && [s, f];
      },
      { timeout: 20000, message: "repeated long polls" },
    );
    // Lower bounds (timers never fire early), and the two pages compared side
    // by side: no upper bound a loaded machine could break.
    const slowGap = s[1].t - s[0].t;
    assert.ok(slowGap >= 2450, `callbackInterval 2500: next start after ${slowGap} ms`);
    // 200 ms < the server's 1000 ms hold: the end of the stream decides
    const fastGaps = gaps(f.map((r) => r.t));
    for (const fg of fastGaps) assert.ok(fg >= LONG_POLLING_INTERVAL - 50, `callbackInterval 200: ${fg} ms`);
    assert.ok(Math.min(...fastGaps) < slowGap, `callbackInterval 200 (${fastGaps.join(", ")}) vs 2500 (${slowGap}) ms`);
    assert.deepEqual((await bus.log(slow)).length, s.length, "every start reached the server");
  });

  test("backgroundCallbackInterval: spacing of polls when not long polling", async () => {
    const channel = uniq("background-interval");
    const quick = await bus.open({ enableLongPolling: false, backgroundCallbackInterval: 250 });
    const slow = await bus.open({ enableLongPolling: false, backgroundCallbackInterval: 1000 });
    await subscribe(quick, channel);
    await subscribe(slow, channel);
    const [q, s] = await waitFor(
      async () => {
        const q = await starts(quick);
        const s = await starts(slow);
        return s.length >= 3 && [q, s];
      },
      { timeout: 20000, message: "three slow polls" },
    );
    for (const g of gaps(q.map((r) => r.t))) assert.ok(g >= 240, `backgroundCallbackInterval 250: ${g} ms`);
    for (const g of gaps(s.map((r) => r.t))) assert.ok(g >= 980, `backgroundCallbackInterval 1000: ${g} ms`);
    // side by side over the same time: the quick page polled more often
    const window = [s[0].t, s[s.length - 1].t];
    const quickInWindow = q.filter((r) => r.t >= window[0] && r.t <= window[1]).length;
    assert.ok(quickInWindow > s.length, `${quickInWindow} quick polls vs ${s.length} slow ones over the same time`);
    for (const page of [quick, slow]) assert.ok((await bus.log(page)).every((r) => r.query === "dlp=t"));
  });

  test("minPollInterval: delay of the next long poll after one that brought data", async () => {
    const channel = uniq("min-poll-interval");
    // Not chunked, so that a delivered message ends the request.
    const patient = await bus.open({ enableChunkedEncoding: false, minPollInterval: 900 });
    const eager = await bus.open({ enableChunkedEncoding: false });
    await subscribe(patient, channel);
    await subscribe(eager, channel);
    await ready(patient, channel);
    await ready(eager, channel);
    // the status answer (data) was followed by a second, parked request
    await waitFor(async () => (await bus.log(patient)).length >= 2 && (await bus.log(eager)).length >= 2, {
      message: "parked second requests",
    });
    const before = { patient: (await starts(patient)).length, eager: (await starts(eager)).length };
    await bus.publish(channel, "data");
    const delay = async (page, n) => {
      await receivedUntil(page, channel, "data");
      const at = (await page.evaluate(() => window.got)).find((g) => g.data === "data").at;
      const next = await waitFor(async () => (await starts(page))[n], { timeout: 3000, message: "the next poll" });
      return next.t - at;
    };
    const p = await delay(patient, before.patient);
    const e = await delay(eager, before.eager);
    assert.ok(p >= 890, `minPollInterval 900: next poll ${p} ms after the message`);
    assert.ok(e >= 90, `minPollInterval 100 (default): next poll ${e} ms after the message`);
    assert.ok(e < p, `minPollInterval 100 waits less than 900: ${e} vs ${p} ms`);
  });

  test("maxPollInterval: caps the back-off after repeated failures", async () => {
    const channel = uniq("max-poll-interval");
    const capped = await bus.open({ callbackInterval: 100, maxPollInterval: 300 });
    const uncapped = await bus.open({ callbackInterval: 100 });
    for (const page of [capped, uncapped]) await page.route("**/message-bus/**", (route) => route.abort("connectionrefused"));
    await subscribe(capped, channel);
    await subscribe(uncapped, channel);
    // 11 attempts: 10 failures. The page's own send times (not the route
    // handler's, which can run late): after failure n the next attempt waits
    // at least min(callbackInterval × n, maxPollInterval) from n = 3 on.
    const [c, u] = await waitFor(
      async () => {
        const c = (await starts(capped)).map((r) => r.t);
        const u = (await starts(uncapped)).map((r) => r.t);
        return c.length >= 11 && u.length >= 11 && [gaps(c.slice(0, 11)), gaps(u.slice(0, 11))];
      },
      { timeout: 30000, message: "ten failed attempts on each page" },
    );
    for (let n = 3; n <= 10; n++) {
      assert.ok(c[n - 1] >= 295, `capped at 300, gap after failure ${n}: ${c.join(", ")}`);
      assert.ok(u[n - 1] >= 100 * n - 5, `uncapped grows linearly, gap after failure ${n}: ${u.join(", ")}`);
    }
    // Side by side: failures 3-10 wait 8 × 300 ms when capped, 3 + ... + 10 = 52 × 100 ms when not.
    const sum = (list) => list.reduce((a, b) => a + b, 0);
    assert.ok(sum(c.slice(2)) < sum(u.slice(2)), `capped ${c.join(", ")} vs uncapped ${u.join(", ")}`);
  });

  test("alwaysLongPoll: a hidden page keeps long polling", async () => {
    const channel = uniq("always-long-poll");
    const always = await bus.open({ alwaysLongPoll: true }, { hidden: true });
    const normal = await bus.open({ backgroundCallbackInterval: 200, minHiddenPollInterval: 0 }, { hidden: true });
    await subscribe(always, channel);
    await subscribe(normal, channel);
    await ready(always, channel);
    await ready(normal, channel);
    await bus.publish(channel, "x");
    await receivedUntil(always, channel, "x");
    await receivedUntil(normal, channel, "x");
    assert.ok((await bus.log(always)).every((r) => !r.query.includes("dlp=t") && !r.dont_chunk), "alwaysLongPoll: streaming");
    assert.ok((await bus.log(normal)).every((r) => r.query.includes("dlp=t")), "hidden: polling");
  });

  test("shouldLongPollCallback: replaces the visibility test", async () => {
    const channel = uniq("should-long-poll");
    const hiddenButLong = await bus.open({}, { hidden: true, code: "MessageBus.shouldLongPollCallback = () => true" });
    const visibleButPolling = await bus.open(
      { backgroundCallbackInterval: 200 },
      { code: "MessageBus.shouldLongPollCallback = () => false" },
    );
    await subscribe(hiddenButLong, channel);
    await subscribe(visibleButPolling, channel);
    await ready(hiddenButLong, channel);
    await ready(visibleButPolling, channel);
    await bus.publish(channel, "y");
    await receivedUntil(hiddenButLong, channel, "y");
    await receivedUntil(visibleButPolling, channel, "y");
    assert.ok((await bus.log(hiddenButLong)).every((r) => !r.query.includes("dlp=t")), "callback true: long polling");
    assert.ok((await bus.log(visibleButPolling)).every((r) => r.query.includes("dlp=t")), "callback false: polling");
  });

  test("headers: sent with every poll and seen by the server's lookups", async () => {
    const channel = uniq("headers");
    const user7 = await bus.open({ headers: { "X-User-Id": "7", "X-Want-Extra": "1" } });
    const group3 = await bus.open({ headers: { "X-User-Id": "8", "X-Group-Ids": "3,4" } });
    const anonymous = await bus.open();
    for (const page of [user7, group3, anonymous]) await subscribe(page, channel);
    for (const page of [user7, group3, anonymous]) await ready(page, channel);

    await bus.publish(channel, "for user 7", { user_ids: [7] });
    await bus.publish(channel, "for group 3", { group_ids: [3] });
    await bus.publish(channel, "for everyone");
    assert.deepEqual(await receivedUntil(user7, channel, "for everyone"), ["for user 7", "for everyone"]);
    assert.deepEqual(await receivedUntil(group3, channel, "for everyone"), ["for group 3", "for everyone"]);
    assert.deepEqual(await receivedUntil(anonymous, channel, "for everyone"), ["for everyone"]);

    assert.ok((await bus.log(user7)).every((r) => r.user === "7"));
    assert.ok((await bus.log(group3)).every((r) => r.user === "8" && r.groups === "3,4"));
    // extra_response_headers_lookup answered the header
    assert.equal(user7.responses[0].headers["x-extra"], "yes");
    assert.equal(anonymous.responses[0].headers["x-extra"], undefined);
  });

  test("minHiddenPollInterval: hidden tabs of one origin space their polls through localStorage", async () => {
    const channel = uniq("min-hidden");
    const context = await browser.newContext(); // one origin, one localStorage, two tabs
    contexts.push(context);
    // Tabs that do not share a connection (shared ones poll once, through their leader).
    const options = { backgroundCallbackInterval: 100, minHiddenPollInterval: 1000, shareConnection: false };
    const one = await bus.open(options, { context, hidden: true });
    const two = await bus.open(options, { context, hidden: true });
    await subscribe(one, channel);
    await subscribe(two, channel);
    const [a, b] = await waitFor(
      async () => {
        const a = await starts(one);
        const b = await starts(two);
        return a.length + b.length >= 5 && a.length >= 1 && b.length >= 1 && [a, b];
      },
      // Generous: Chromium aligns a background page's timers to whole
      // seconds, so each tab's poll, its 100 ms callback interval and its
      // 0.5-1 s wait for the other tab's spacing can take about a second
      // each; 5 polls took more than 10 s on a loaded machine.
      { timeout: 30000, message: "polls from both tabs" },
    );
    // Without the shared spacing, two tabs at 100 ms would poll ~20 times a second.
    const all = gaps([...a, ...b].map((r) => r.t).sort((x, y) => x - y));
    const close = all.filter((g) => g < 950);
    assert.ok(close.length <= 1, `polls of both tabs: gaps ${all.join(", ")} ms`);
    // a visible tab is not held back by the hidden tabs' polls
    const visible = await bus.open({ ...options, enableLongPolling: false }, { context });
    await subscribe(visible, channel);
    const v = await waitFor(async () => (await starts(visible)).length >= 5 && starts(visible), { timeout: 20000, message: "visible polls" });
    // over the same time, the hidden tabs (1 poll a second between them) polled less
    const hidden = [...(await starts(one)), ...(await starts(two))].filter((r) => r.t >= v[0].t && r.t <= v[4].t);
    assert.ok(hidden.length < 5, `visible tab: 5 polls (gaps ${gaps(v.map((r) => r.t)).join(", ")} ms), hidden tabs ${hidden.length}`);
  });
});

// ---- baseUrl needs a server whose base_route matches -------------------------------

describe("baseUrl against a server with base_route /forum/", { skip }, () => {
  let server;
  let bus;
  before(async () => {
    server = await startPuma(APP, { env: { MB_LONG_POLLING_INTERVAL: "1000", MB_BASE_ROUTE: "/forum/" } });
    bus = client(server);
  });
  after(async () => {
    await server?.stop();
  });

  test("baseUrl: polls go to <baseUrl>message-bus/ and messages flow", async () => {
    const channel = uniq("base-url");
    const a = await bus.open({ baseUrl: "/forum/" });
    const b = await bus.open({ baseUrl: "/forum/", enableChunkedEncoding: false });
    await subscribe(a, channel);
    await subscribe(b, channel);
    await ready(a, channel);
    await ready(b, channel);
    await publishFrom(a, channel, "from a");
    await publishFrom(b, channel, "from b");
    for (const page of [a, b]) assert.deepEqual(await receivedUntil(page, channel, "from b"), ["from a", "from b"]);
    for (const page of [a, b]) {
      const log = await bus.log(page);
      assert.ok(log.length >= 1);
      for (const r of log) assert.match(r.path, /^\/forum\/message-bus\/[0-9a-f]{32}\/poll$/);
    }
    // the default baseUrl misses the route: the app answers 404, the client counts failures
    const lost = await bus.open({ callbackInterval: 100 });
    const status = new Promise((resolve) => lost.on("response", (r) => r.url().includes("/message-bus/") && resolve(r.status())));
    await subscribe(lost, channel);
    assert.equal(await status, 404);
  });
});

describe("a server restart mid-stream (Redis backend)", { skip }, () => {
  test("a page loses nothing that stayed in the backlog while the server was down", async () => {
    const env = { MB_BACKEND: "redis", MB_RESET: "1" };
    let server = await startPuma(APP, { env });
    try {
      const page = await client(server).open();
      await page.evaluate(() => (window.got = []));
      await subscribe(page, "/restart");
      await ready(page, "/restart");
      await client(server).publish("/restart", "before");
      await receivedUntil(page, "/restart", "before");
      const port = server.port;
      await server.stop();
      // Published by another process while no web server runs.
      execFileSync("ruby", ["-Ilib", "-e", `
        require "message_bus"
        MessageBus.configure(backend: :redis, redis_config: { db: 12 }, logger: Logger.new(nil))
        %w[during-1 during-2].each { |d| MessageBus.publish("/restart", d) }
        MessageBus.destroy`], { cwd: ROOT });
      server = await startPuma(APP, { env: { MB_BACKEND: "redis" }, port });
      await client(server).publish("/restart", "after");
      const list = await receivedUntil(page, "/restart", "after", 15000);
      assert.deepEqual(list, ["before", "during-1", "during-2", "after"]);
    } finally {
      await server.stop();
    }
  });
});
