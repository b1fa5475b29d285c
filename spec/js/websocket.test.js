"use strict";
// The WebSocket transport of message-bus.js against a fake WebSocket: what
// the page sends on the socket, how frames reach callbacks, and when it falls
// back to long polling or reconnects.
const test = require("node:test");
const assert = require("node:assert/strict");
const { createEnv, msg, status, parseForm } = require("./harness");

const noop = () => {};

function wsEnv(opts = {}, setup) {
  const env = createEnv({ webSocket: true, ...opts });
  if (setup) setup(env.MB);
  return env;
}

test("subscribe opens one WebSocket at <baseUrl>message-bus/<clientId>/ws and sends the positions on open", () => {
  const env = wsEnv();
  env.MB.clientId = "abc";
  env.MB.subscribe("/a", noop);
  env.MB.subscribe("/b", noop, 7);
  assert.equal(env.sockets.length, 1);
  assert.equal(env.socket().url, "ws://example.test/message-bus/abc/ws");
  assert.equal(env.requests.length, 0, "no long poll while the socket connects");
  env.socket().open();
  assert.deepEqual(env.socket().sent, [{ subscribe: { "/a": -1, "/b": 7 } }]);
  assert.equal(env.MB.diagnostics().transport, "websocket");
});

test("the socket URL follows baseUrl and the page's scheme", () => {
  const secure = wsEnv({ location: { protocol: "https:", host: "h.test:8443", pathname: "/" } }, (MB) => {
    MB.baseUrl = "/forum/";
    MB.clientId = "c";
  });
  secure.MB.subscribe("/a", noop);
  assert.equal(secure.socket().url, "wss://h.test:8443/forum/message-bus/c/ws");

  const absolute = wsEnv({}, (MB) => {
    MB.baseUrl = "https://bus.example/";
    MB.clientId = "c";
  });
  absolute.MB.subscribe("/a", noop);
  assert.equal(absolute.socket().url, "wss://bus.example/message-bus/c/ws");

  const relative = wsEnv({}, (MB) => {
    MB.baseUrl = "api/";
    MB.clientId = "c";
  });
  relative.MB.subscribe("/a", noop);
  assert.equal(relative.socket().url, "ws://example.test/chat/api/message-bus/c/ws");
});

test("frames are arrays of poll messages: callbacks run in order, ids and /__status move positions", () => {
  const env = wsEnv();
  const got = [];
  env.MB.subscribe("/a", (data, globalId, messageId) => got.push([data, globalId, messageId]));
  env.MB.subscribe("/b", noop);
  env.socket().open();
  env.socket().receive([status({ "/a": 3, "/b": 10 })]);
  env.socket().receive([msg("/a", 4, "x", 40), msg("/a", 5, "y", 41)]);
  assert.deepEqual(got, [
    ["x", 40, 4],
    ["y", 41, 5],
  ]);
  const ids = Object.fromEntries(env.MB.callbacks.map((c) => [c.channel, c.last_id]));
  assert.deepEqual(ids, { "/a": 5, "/b": 10 });
});

test("subscribe and unsubscribe on an open socket are messages on it, not reconnects", () => {
  const env = wsEnv();
  const f = env.MB.subscribe("/a", () => {});
  env.socket().open();
  env.MB.subscribe("/b", noop, 12);
  env.MB.subscribe("/a", () => {}, 3);
  assert.equal(env.MB.unsubscribe("/b"), true);
  env.MB.unsubscribe("/a", f); // another callback still listens on /a
  assert.equal(env.sockets.length, 1);
  assert.deepEqual(env.socket().sent, [
    { subscribe: { "/a": -1 } },
    { subscribe: { "/b": 12 } },
    { subscribe: { "/a": 3 } },
    { unsubscribe: ["/b"] },
  ]);
  env.MB.unsubscribe("/a*");
  assert.deepEqual(env.socket().sent.at(-1), { unsubscribe: ["/a"] });
  assert.equal(env.requests.length, 0);
});

test("a socket that closes before opening (refused upgrade): long polling, then WebSocket again after retryWebSocketAfterRequests", () => {
  const env = wsEnv({}, (MB) => {
    MB.retryWebSocketAfterRequests = 2;
    MB.callbackInterval = 1000;
  });
  env.MB.subscribe("/a", noop, 5);
  env.socket().drop(1006);
  assert.equal(env.requests.length, 1, "a long poll right away");
  assert.deepEqual(parseForm(env.last().body).filter(([k]) => k !== "__seq"), [["/a", "5"]]);
  env.last().respond(200, "[]");
  env.advance(1000);
  assert.equal(env.requests.length, 2, "still long polling");
  env.last().respond(200, "[]");
  env.advance(1000);
  assert.equal(env.sockets.length, 2, "then the WebSocket is tried again");
  assert.equal(env.requests.length, 2);
});

test("a socket that does not open within 5 s is given up for long polling", () => {
  const env = wsEnv();
  env.MB.subscribe("/a", noop);
  env.advance(4900);
  assert.equal(env.requests.length, 0);
  env.advance(200);
  assert.ok(env.socket().closedWith, "the socket was closed");
  assert.equal(env.requests.length, 1);
  assert.doesNotMatch(env.last().url, /\/ws/);
  assert.match(env.last().url, /\/poll$/);
});

test("a dropped socket reconnects with the last ids, backing off while drops repeat", () => {
  const env = wsEnv({}, (MB) => {
    MB.minPollInterval = 100;
  });
  env.MB.subscribe("/a", noop);
  env.socket().open();
  env.socket().receive([msg("/a", 9, "x")]);
  env.socket().drop(1001, "going away");
  assert.equal(env.sockets.length, 1, "not at once");
  env.advance(200); // first reconnect: 100-200 ms
  assert.equal(env.sockets.length, 2);
  env.socket().open();
  assert.deepEqual(env.socket().sent, [{ subscribe: { "/a": 9 } }]);

  // Each further drop without a frame in between doubles the delay.
  env.socket().drop(1008, "slow consumer");
  env.advance(199);
  assert.equal(env.sockets.length, 2, "second reconnect waits at least 200 ms");
  env.advance(201);
  assert.equal(env.sockets.length, 3);
  assert.equal(env.requests.length, 0, "no long poll: the server speaks WebSocket");
});

test("after a drop, a reconnect that fails to open makes one long poll, then tries the socket again", () => {
  const env = wsEnv({}, (MB) => (MB.callbackInterval = 1000));
  env.MB.subscribe("/a", noop);
  env.socket().open();
  env.socket().drop(1006);
  env.advance(200);
  env.socket().drop(1006); // the server is restarting
  assert.equal(env.requests.length, 1);
  env.last().respond(200, "[]");
  env.advance(1000);
  assert.equal(env.sockets.length, 3);
});

test("no WebSocket when disabled, without long polling, with custom headers, or when the browser has none", () => {
  const variants = [
    (MB) => (MB.enableWebSocket = false),
    (MB) => (MB.enableLongPolling = false),
    (MB) => (MB.headers = { "X-Token": "t" }),
  ];
  for (const setup of variants) {
    const env = wsEnv({}, setup);
    env.MB.subscribe("/a", noop);
    assert.equal(env.sockets.length, 0);
    assert.equal(env.requests.length, 1);
  }
  const plain = createEnv();
  plain.MB.subscribe("/a", noop);
  assert.equal(plain.requests.length, 1);
  assert.equal(plain.MB.diagnostics().transport, "streaming");
});

test("a hidden page polls in the background instead of opening a socket; an open socket stays open when hidden", () => {
  const hidden = wsEnv({ hidden: true });
  hidden.MB.subscribe("/a", noop);
  assert.equal(hidden.sockets.length, 0);
  assert.match(hidden.last().url, /dlp=t/);

  const env = wsEnv();
  env.MB.subscribe("/a", noop);
  env.socket().open();
  env.document.setHidden(true);
  env.advance(60000);
  assert.equal(env.socket().closedWith, null);
  assert.equal(env.requests.length, 0);
});

test("stop() closes the socket and nothing reconnects; pause() queues frames until resume()", () => {
  const env = wsEnv();
  const got = [];
  env.MB.subscribe("/a", (d) => got.push(d));
  env.socket().open();
  env.MB.pause();
  env.socket().receive([msg("/a", 1, "one")]);
  assert.deepEqual(got, []);
  env.MB.resume();
  assert.deepEqual(got, ["one"]);
  env.MB.stop();
  assert.equal(env.socket().closedWith.code, 1000);
  env.advance(600000);
  assert.equal(env.sockets.length, 1);
  assert.equal(env.requests.length, 0);
});

test("frames that are not JSON arrays are counted and skipped", () => {
  const env = wsEnv();
  const got = [];
  env.MB.subscribe("/a", (d) => got.push(d));
  env.socket().open();
  env.socket().receive("not json");
  env.socket().receive('{"channel":"/a"}');
  env.socket().receive([msg("/a", 1, "ok")]);
  assert.deepEqual(got, ["ok"]);
  assert.equal(env.MB.diagnostics().malformedChunks, 2);
});
