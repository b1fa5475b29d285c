// The browser client over WebSocket and Server-Sent Events in headless
// Chromium against the real gem (spec/browser/bus_app.ru on Puma): the
// client picks WebSocket and gets its messages with no poll requests; it
// falls back to long polling when the server refuses the upgrade; and a
// plain EventSource resumes with Last-Event-ID across a server restart.
import { describe, test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { ROOT, NATIVE_BUILT, startPuma, launchBrowser, waitFor } from "./helpers.mjs";

const APP = path.join(ROOT, "spec/browser/bus_app.ru");
const skip = !NATIVE_BUILT && "needs the built extension (rake compile)";

let browser;
const contexts = [];

before(async () => {
  if (!skip) browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
});
afterEach(async () => {
  while (contexts.length) await contexts.pop().close();
});

async function openPage(server, options = {}) {
  const ctx = await browser.newContext();
  contexts.push(ctx);
  const page = await ctx.newPage();
  await page.goto(`${server.base}/`);
  await page.evaluate((o) => {
    Object.assign(MessageBus, o);
    window.got = [];
  }, { callbackInterval: 300, ...options });
  return page;
}

async function publish(server, channel, data) {
  const res = await fetch(`${server.base}/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ channel, data }),
  });
  assert.equal(res.status, 200);
  return res.json();
}

const subscribe = (page, channel) =>
  page.evaluate((c) => MessageBus.subscribe(c, (data) => window.got.push({ channel: c, data })), channel);

const got = (page, channel) => page.evaluate((c) => window.got.filter((g) => g.channel === c).map((g) => g.data), channel);

const ready = (page, channel) =>
  waitFor(() => page.evaluate((c) => MessageBus.callbacks.some((cb) => cb.channel === c && cb.last_id >= 0), channel), {
    message: `subscription to ${channel} established`,
  });

async function receivedUntil(page, channel, last, timeout = 5000) {
  return waitFor(
    async () => {
      const list = await got(page, channel);
      return list.includes(last) && list;
    },
    { timeout, message: `${JSON.stringify(last)} on ${channel}` },
  );
}

const polls = async (server, page) => {
  const id = await page.evaluate(() => MessageBus.clientId);
  const log = await (await fetch(`${server.base}/log?client=${id}`)).json();
  return log.filter((entry) => !entry.path.endsWith("/ws"));
};

describe("the browser client over WebSocket", { skip }, () => {
  let server;
  before(async () => {
    server = await startPuma(APP);
  });
  after(async () => {
    await server?.stop();
  });

  test("uses WebSocket, receives live messages and later subscriptions on the same socket, with no poll", async () => {
    const page = await openPage(server);
    await subscribe(page, "/ws/a");
    await page.evaluate(() => MessageBus.start());
    await ready(page, "/ws/a");
    assert.equal(await page.evaluate(() => MessageBus.diagnostics().transport), "websocket");
    await publish(server, "/ws/a", "one");
    await publish(server, "/ws/a", { n: 2 });
    await waitFor(async () => (await got(page, "/ws/a")).length === 2, { message: "both messages" });
    assert.deepEqual(await got(page, "/ws/a"), ["one", { n: 2 }]);
    await subscribe(page, "/ws/b");
    await ready(page, "/ws/b");
    await publish(server, "/ws/b", "on b");
    await receivedUntil(page, "/ws/b", "on b");
    const waiting = await (await fetch(`${server.base}/waiting`)).json();
    assert.equal(waiting.parked, 1);
    assert.equal(await page.evaluate(() => MessageBus.diagnostics().transport), "websocket");
    assert.deepEqual(await polls(server, page), []);
  });
});

describe("the browser client when the upgrade is refused", { skip }, () => {
  let server;
  before(async () => {
    server = await startPuma(APP, { env: { MB_WEBSOCKET: "off" } });
  });
  after(async () => {
    await server?.stop();
  });

  test("falls back to long polling and receives its messages", async () => {
    const page = await openPage(server);
    await subscribe(page, "/fallback");
    await page.evaluate(() => MessageBus.start());
    await ready(page, "/fallback");
    await publish(server, "/fallback", "by long poll");
    await receivedUntil(page, "/fallback", "by long poll");
    const transport = await page.evaluate(() => MessageBus.diagnostics().transport);
    assert.ok(["streaming", "long-polling"].includes(transport), transport);
  });
});

describe("EventSource against the SSE route (Redis backend)", { skip }, () => {
  test("resumes with Last-Event-ID across a server restart: no gap, no duplicate", async () => {
    let server = await startPuma(APP, { env: { MB_BACKEND: "redis", MB_RESET: "1" } });
    try {
      const page = await openPage(server);
      await page.evaluate(() => {
        window.events = [];
        window.ids = [];
        const source = new EventSource("/message-bus/es-client/sse?" + new URLSearchParams({ "/es": "-1" }));
        source.onmessage = (e) => {
          window.ids.push(e.lastEventId);
          for (const m of JSON.parse(e.data)) if (m.channel === "/es") window.events.push(m.data);
        };
        window.source = source;
      });
      await waitFor(() => page.evaluate(() => window.ids.length > 0), { message: "the first event (the status)" });
      await publish(server, "/es", "before");
      await waitFor(() => page.evaluate(() => window.events.includes("before")), { message: "before" });
      const port = server.port;
      await server.stop();
      server = await startPuma(APP, { env: { MB_BACKEND: "redis" }, port });
      await publish(server, "/es", "while reconnecting");
      await publish(server, "/es", "after");
      const events = await waitFor(
        async () => {
          const list = await page.evaluate(() => window.events);
          return list.includes("after") && list;
        },
        { timeout: 15000, message: "the EventSource resumed" },
      );
      assert.deepEqual(events, ["before", "while reconnecting", "after"]);
    } finally {
      await server.stop();
    }
  });
});
