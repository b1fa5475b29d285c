"use strict";
// The storage's epoch: a response that carries a new one means the backlog
// was reset (ids start again at 1). The client drops that response, asks
// again from the new storage's first message and calls onReset per channel.
const test = require("node:test");
const assert = require("node:assert/strict");
const { createEnv, createGroupHub, msg, status, record: chunk } = require("./harness");

const JSON_HEADERS = { "Content-Type": "application/json; charset=utf-8" };
const withEpoch = (epoch) => ({ ...JSON_HEADERS, "X-MessageBus-Epoch": epoch });
const noop = () => {};

function asked(env) {
  return Object.fromEntries(env.last().form.filter(([k]) => k !== "__seq").map(([k, v]) => [k, Number(v)]));
}

test("a poll answered under a new epoch: the answer is dropped, positions go to 0, onReset once per channel", () => {
  const env = createEnv({ progress: false });
  const resets = [];
  env.MB.onReset = (channel) => resets.push(channel);
  env.MB.callbackInterval = 1000;
  const got = [];
  env.MB.subscribe("/a", (d) => got.push(d), 0);
  env.MB.subscribe("/a", noop, 0);
  env.MB.subscribe("/b", noop, 0);
  env.advance(200); // the subscribes restarted the request
  env.last().respond(200, JSON.stringify([msg("/a", 499, "old"), msg("/a", 500, "old")]), withEpoch("e1"));
  env.advance(200);
  assert.deepEqual(asked(env), { "/a": 500, "/b": 0 });
  // Redis was flushed: the client is ahead of the bus, the server says where it is.
  env.last().respond(200, JSON.stringify([status({ "/a": 3 })]), withEpoch("e2"));
  assert.deepEqual(resets, ["/a", "/b"]);
  assert.deepEqual([...env.MB.callbacks].map((c) => c.last_id), [0, 0, 0]);
  env.advance(200);
  assert.deepEqual(asked(env), { "/a": 0, "/b": 0 });
  env.last().respond(200, JSON.stringify([msg("/a", 1, "n1"), msg("/a", 2, "n2"), msg("/a", 3, "n3")]), withEpoch("e2"));
  assert.deepEqual(got, ["old", "old", "n1", "n2", "n3"]);
  assert.equal(env.MB.diagnostics().resets, 1);
  assert.equal(env.MB.diagnostics().epoch, "e2");
});

test("a stream that opens under a new epoch is given up at once and asked again from 0", () => {
  const env = createEnv();
  let resets = 0;
  env.MB.onReset = () => resets++;
  env.MB.subscribe("/a", noop, 7);
  env.last().stream(chunk([]), { "Content-Type": "text/plain; charset=utf-8", "X-MessageBus-Epoch": "e1" });
  env.last().end();
  env.advance(16000);
  const second = env.last();
  second.stream(chunk([status({ "/a": 2 })]), { "Content-Type": "text/plain; charset=utf-8", "X-MessageBus-Epoch": "e2" });
  assert.ok(second.aborted);
  assert.equal(resets, 1);
  env.advance(200);
  assert.deepEqual(asked(env), { "/a": 0 });
});

test("over a WebSocket the epoch opens the first frame; a new one starts again from 0 on a fresh socket", () => {
  const env = createEnv({ webSocket: true });
  const got = [];
  let resets = 0;
  env.MB.onReset = () => resets++;
  env.MB.subscribe("/a", (d) => got.push(d), 0);
  const old = env.socket();
  old.open();
  old.receive([{ global_id: -1, message_id: -1, channel: "/__epoch", data: "e1" }, msg("/a", 1, "x")]);
  old.receive([{ global_id: -1, message_id: -1, channel: "/__epoch", data: "e2" }]);
  assert.equal(resets, 1);
  assert.equal(old.closedWith.code, 1000);
  const fresh = env.socket();
  assert.notEqual(fresh, old);
  // What the old socket still brings (an answer to the old positions) is dropped.
  old.receive([msg("/a", 7, "stale")]);
  fresh.open();
  assert.deepEqual(fresh.sent.at(-1), { subscribe: { "/a": 0 } });
  fresh.receive([{ global_id: -1, message_id: -1, channel: "/__epoch", data: "e2" }, msg("/a", 1, "y")]);
  assert.equal(resets, 1);
  assert.deepEqual(got, ["x", "y"]);
});

test("tabs sharing a connection: the leader's reset reaches every tab, each calls onReset and starts again from 0", async () => {
  const hub = createGroupHub();
  const a = createEnv({ group: hub, progress: false });
  const b = createEnv({ group: hub, progress: false });
  const resets = { a: [], b: [] };
  a.MB.onReset = (c) => resets.a.push(c);
  b.MB.onReset = (c) => resets.b.push(c);
  a.MB.subscribe("/a", noop, 0);
  await hub.settle();
  b.MB.subscribe("/b", noop, 4);
  await hub.settle();
  a.advance(100);
  await hub.settle();
  a.last().respond(200, "[]", withEpoch("e1"));
  a.advance(16000);
  await hub.settle();
  a.last().respond(200, JSON.stringify([status({ "/a": 1, "/b": 1 })]), withEpoch("e2"));
  await hub.settle();
  assert.deepEqual(resets, { a: ["/a"], b: ["/b"] });
  assert.deepEqual([...b.MB.callbacks].map((c) => c.last_id), [0]);
  a.advance(200);
  await hub.settle();
  assert.deepEqual(asked(a), { "/a": 0, "/b": 0 });
});
