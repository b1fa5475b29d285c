"use strict";
// start/stop/pause/resume/status, subscribe/unsubscribe, lastId semantics, diagnostics.
const test = require("node:test");
const assert = require("node:assert/strict");
const { createEnv, msg, status } = require("./harness");

const noop = () => {};
const plain = (x) => JSON.parse(JSON.stringify(x));

test("status() throws before the first start, then reports started / paused / stopped", () => {
  const { MB } = createEnv();
  assert.throws(() => MB.status(), (e) => e === "Cannot determine current status");
  MB.start();
  assert.equal(MB.status(), "started");
  MB.pause();
  assert.equal(MB.status(), "paused");
  MB.resume();
  assert.equal(MB.status(), "started");
  MB.stop();
  assert.equal(MB.status(), "stopped");
});

test("start() is a no-op when already started", () => {
  const env = createEnv();
  env.MB.subscribe("/a", noop);
  env.MB.start();
  env.MB.start();
  assert.equal(env.requests.length, 1);
});

test("start() without callbacks sends nothing; the first subscribe triggers a request", () => {
  const env = createEnv();
  env.MB.start();
  env.advance(5000);
  assert.equal(env.requests.length, 0);
  env.MB.subscribe("/a", noop);
  env.advance(2500);
  assert.equal(env.requests.length, 1);
});

test("stop() aborts the request in flight, cancels schedules, removes the visibility listener", () => {
  const env = createEnv();
  env.MB.subscribe("/a", noop);
  assert.equal(env.document.listenerCount("visibilitychange"), 1);
  const req = env.last();
  env.MB.stop();
  assert.equal(req.aborted, true);
  assert.equal(env.MB.longPoll, null);
  assert.equal(env.document.listenerCount("visibilitychange"), 0);
  env.advance(10 * 60 * 1000);
  assert.equal(env.requests.length, 1);
});

test("subscribe() on a stopped client does not restart it; start() does", () => {
  const env = createEnv();
  env.MB.subscribe("/a", noop);
  env.MB.stop();
  env.MB.subscribe("/b", noop);
  env.advance(60000);
  assert.equal(env.requests.length, 1);
  assert.equal(env.MB.status(), "stopped");
  env.MB.start();
  assert.equal(env.requests.length, 2);
  assert.equal(env.last().body, "%2Fa=-1&%2Fb=-1&__seq=2");
});

test("subscribe validates its arguments with thrown strings and returns func", () => {
  const { MB } = createEnv();
  assert.throws(() => MB.subscribe(42, noop), (e) => typeof e === "string" && /string/i.test(e));
  assert.throws(() => MB.subscribe(null, noop), (e) => typeof e === "string");
  assert.throws(() => MB.subscribe("/a", noop, "5"), (e) => typeof e === "string" && /lastId/.test(e));
  assert.equal(MB.callbacks.length, 0, "nothing registered by invalid calls");
  const f = () => {};
  assert.equal(MB.subscribe("/a", f, null), f);
  assert.equal(MB.callbacks[0].last_id, -1);
  MB.subscribe("/b", f, undefined);
  assert.equal(MB.callbacks[1].last_id, -1);
  MB.subscribe("/c", f, -20);
  assert.equal(MB.callbacks[2].last_id, -20);
});

test("subscribe aborts the request in flight; the new request, 100 ms later, includes the channel", () => {
  const env = createEnv();
  env.MB.subscribe("/a", noop);
  const first = env.last();
  env.MB.subscribe("/b", noop, 3);
  assert.equal(first.aborted, true);
  env.advance(99);
  assert.equal(env.requests.length, 1);
  env.advance(1);
  assert.equal(env.last().body, "%2Fa=-1&%2Fb=3&__seq=2");
});

test("aborts caused by subscribe are not failures: no backoff after many of them (ajax adapter)", () => {
  const env = createEnv();
  for (let i = 0; i < 6; i++) {
    env.MB.subscribe("/c" + i, noop);
    env.advance(100);
  }
  assert.equal(env.MB.diagnostics().totalAjaxFailures, 0);
  assert.equal(env.requests.length, 6);
});

test("a message sets last_id and calls func(data, global_id, message_id)", () => {
  const env = createEnv({ hidden: true });
  const got = [];
  env.MB.subscribe("/chat", (...args) => got.push(args));
  env.last().respondJSON([msg("/chat", 3, { t: 1 }, 17), msg("/other", 9, "x")]);
  assert.deepEqual(plain(got), [[{ t: 1 }, 17, 3]]);
  assert.equal(env.MB.callbacks[0].last_id, 3);
});

test("/__status sets last ids of the named channels only, and they are sent next time", () => {
  const env = createEnv({ hidden: true });
  const got = [];
  env.MB.subscribe("/a", (d) => got.push(d));
  env.MB.subscribe("/b", noop, 5);
  env.advance(2500); // hidden tab: no new request within minHiddenPollInterval of the last one
  env.last().respondJSON([status({ "/a": 12, "/zzz": 99 })]);
  assert.deepEqual(got, [], "status is not delivered to callbacks");
  assert.equal(env.MB.callbacks[0].last_id, 12);
  assert.equal(env.MB.callbacks[1].last_id, 5);
  env.advance(60000); // hidden: backgroundCallbackInterval
  assert.equal(env.last().body, "%2Fa=12&%2Fb=5&__seq=3");
});

test("several callbacks on one channel all receive the message", () => {
  const env = createEnv({ hidden: true });
  const a = [];
  const b = [];
  env.MB.subscribe("/x", (d) => a.push(d));
  env.MB.subscribe("/x", (d) => b.push(d));
  env.advance(2500);
  env.last().respondJSON([msg("/x", 1, "hello")]);
  assert.deepEqual([a, b], [["hello"], ["hello"]]);
});

test("an exception in a callback is logged and does not stop other callbacks", () => {
  const env = createEnv({ hidden: true });
  const b = [];
  env.MB.subscribe("/x", () => {
    throw new Error("boom");
  });
  env.MB.subscribe("/x", (d) => b.push(d));
  env.advance(2500);
  env.last().respondJSON([msg("/x", 1, "m1"), msg("/x", 2, "m2")]);
  assert.deepEqual(b, ["m1", "m2"]);
  assert.ok(env.logs.some((l) => /boom/.test(l)));
  assert.equal(env.MB.callbacks[0].last_id, 2);
});

test("pause queues messages (requests go on); resume delivers them in order", () => {
  const env = createEnv({ hidden: true });
  const got = [];
  env.MB.subscribe("/x", (d) => got.push(d));
  env.MB.pause();
  env.last().respondJSON([msg("/x", 1, "one")]);
  env.advance(60000);
  assert.equal(env.requests.length, 2, "requests continue while paused");
  // ids already received are not asked for again
  assert.equal(env.last().body, "%2Fx=1&__seq=2");
  env.last().respondJSON([msg("/x", 2, "two")]);
  assert.deepEqual(got, []);
  env.MB.resume();
  assert.deepEqual(got, ["one", "two"]);
  env.MB.resume();
  assert.deepEqual(got, ["one", "two"], "queue cleared");
});

test("unsubscribe by exact channel removes all its callbacks and aborts the request", () => {
  const env = createEnv();
  env.MB.subscribe("/a", noop);
  env.MB.subscribe("/a", () => {});
  env.MB.subscribe("/b", noop);
  env.advance(100);
  const req = env.last();
  assert.equal(env.MB.unsubscribe("/a"), true);
  assert.equal(req.aborted, true);
  assert.deepEqual(plain(env.MB.callbacks.map((c) => c.channel)), ["/b"]);
  env.advance(100);
  assert.equal(env.last().body, "%2Fb=-1&__seq=" + env.requests.length);
});

test("unsubscribe with func removes only that callback", () => {
  const env = createEnv();
  const f = () => {};
  const g = () => {};
  env.MB.subscribe("/a", f);
  env.MB.subscribe("/a", g);
  assert.equal(env.MB.unsubscribe("/a", g), true);
  assert.equal(env.MB.callbacks.length, 1);
  assert.equal(env.MB.callbacks[0].func, f);
  assert.equal(env.MB.unsubscribe("/a", g), false);
});

test("unsubscribe with a trailing * removes every channel with that prefix", () => {
  const env = createEnv();
  for (const c of ["/chat/1", "/chat/2", "/chatter", "/notices"]) env.MB.subscribe(c, noop);
  assert.equal(env.MB.unsubscribe("/chat/*"), true);
  assert.deepEqual(plain(env.MB.callbacks.map((c) => c.channel)), ["/chatter", "/notices"]);
  assert.equal(env.MB.unsubscribe("/chat*"), true);
  assert.deepEqual(plain(env.MB.callbacks.map((c) => c.channel)), ["/notices"]);
});

test("unsubscribe of nothing returns false and keeps the request in flight", () => {
  const env = createEnv();
  env.MB.subscribe("/a", noop);
  const req = env.last();
  assert.equal(env.MB.unsubscribe("/nope"), false);
  assert.equal(env.MB.unsubscribe("/nope*"), false);
  assert.equal(req.aborted, false);
});

test("callbacks is a live array: the same object survives unsubscribe", () => {
  const env = createEnv();
  const arr = env.MB.callbacks;
  env.MB.subscribe("/a", noop);
  env.MB.subscribe("/b", noop);
  env.MB.unsubscribe("/a");
  assert.equal(env.MB.callbacks, arr);
  assert.equal(arr.length, 1);
});

test("diagnostics() logs and reports counters", () => {
  const env = createEnv({ hidden: true });
  env.MB.subscribe("/a", noop);
  env.last().respond(500, "oops");
  env.advance(20000);
  env.logs.length = 0;
  const d = env.MB.diagnostics();
  assert.equal(d.started, true);
  assert.equal(d.stopped, false);
  assert.equal(d.totalAjaxCalls, 1);
  assert.equal(d.recentFailures, 1);
  assert.equal(d.totalAjaxFailures, 1);
  assert.equal(d.secondsSinceLastAjax, 20);
  assert.equal(d.callbacks.length, 1);
  assert.ok(env.logs.some((l) => /Total ajax calls: 1/.test(l)));
  assert.ok(env.logs.some((l) => /20 seconds ago/.test(l)));
});

test("a callback that unsubscribes another one stops it from receiving the same message", () => {
  const env = createEnv({ hidden: true });
  const got = [];
  const second = (d) => got.push("second " + d);
  env.MB.subscribe("/x", (d) => {
    got.push("first " + d);
    env.MB.unsubscribe("/x", second);
  });
  env.MB.subscribe("/x", second);
  env.advance(2500);
  env.last().respondJSON([msg("/x", 1, "m")]);
  assert.deepEqual(got, ["first m"]);
});
