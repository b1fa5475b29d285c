"use strict";
// What goes on the wire: URL, method, body, headers, per mode and per option.
const test = require("node:test");
const assert = require("node:assert/strict");
const { createEnv } = require("./harness");

const noop = () => {};

test("visible page: streaming long poll, form body in subscription order, __seq", () => {
  const env = createEnv();
  const { MB } = env;
  MB.subscribe("/chat/room-1", noop);
  // the first subscribe starts the client and sends the request at once
  assert.equal(env.requests.length, 1);
  const req = env.last();
  assert.equal(req.method, "POST");
  assert.equal(req.url, "/message-bus/" + MB.clientId + "/poll");
  assert.equal(req.body, "%2Fchat%2Froom-1=-1&__seq=1");
  assert.equal(req.requestHeaders["X-SILENCE-LOGGER"], "true");
  assert.equal(req.requestHeaders["Content-Type"], "application/x-www-form-urlencoded");
  assert.equal(req.requestHeaders["Dont-Chunk"], undefined);
  assert.equal(typeof req.onprogress, "function");
  assert.equal(MB.longPoll !== null, true);
});

test("body lists every channel with its last id, later duplicate wins, __seq counts requests", () => {
  const env = createEnv();
  const { MB } = env;
  MB.subscribe("/chat/room-1", noop, -1);
  MB.subscribe("/notices", noop, 4); // aborts request 1
  env.advance(100);
  assert.equal(env.requests.length, 2);
  assert.equal(env.last().body, "%2Fchat%2Froom-1=-1&%2Fnotices=4&__seq=2");
  MB.subscribe("/chat/room-1", noop, 7);
  env.advance(100);
  assert.deepEqual(env.last().form, [
    ["/chat/room-1", "7"],
    ["/notices", "4"],
    ["__seq", "3"],
  ]);
});

test("hidden page polls with ?dlp=t and Dont-Chunk", () => {
  const env = createEnv({ hidden: true });
  env.MB.subscribe("/a", noop);
  const req = env.last();
  assert.equal(req.url, "/message-bus/" + env.MB.clientId + "/poll?dlp=t");
  assert.equal(req.requestHeaders["Dont-Chunk"], "true");
  assert.equal(req.onprogress, null);
});

test("enableChunkedEncoding = false: long poll without streaming", () => {
  const env = createEnv();
  env.MB.enableChunkedEncoding = false;
  env.MB.subscribe("/a", noop);
  assert.doesNotMatch(env.last().url, /dlp=t/);
  assert.equal(env.last().requestHeaders["Dont-Chunk"], "true");
  assert.equal(env.last().onprogress, null);
});

test("XHR without onprogress support never streams", () => {
  const env = createEnv({ progress: false });
  env.MB.subscribe("/a", noop);
  assert.doesNotMatch(env.last().url, /dlp=t/);
  assert.equal(env.last().requestHeaders["Dont-Chunk"], "true");
});

test("enableLongPolling = false: polling with ?dlp=t even when visible", () => {
  const env = createEnv();
  env.MB.enableLongPolling = false;
  env.MB.subscribe("/a", noop);
  assert.match(env.last().url, /\/poll\?dlp=t$/);
  assert.equal(env.last().requestHeaders["Dont-Chunk"], "true");
});

test("alwaysLongPoll = true: long polls while hidden", () => {
  const env = createEnv({ hidden: true });
  env.MB.alwaysLongPoll = true;
  env.MB.subscribe("/a", noop);
  assert.doesNotMatch(env.last().url, /dlp=t/);
  assert.equal(env.last().requestHeaders["Dont-Chunk"], undefined);
});

test("alwaysLongPoll does not override enableLongPolling = false", () => {
  const env = createEnv();
  env.MB.alwaysLongPoll = true;
  env.MB.enableLongPolling = false;
  env.MB.subscribe("/a", noop);
  assert.match(env.last().url, /dlp=t/);
});

test("shouldLongPollCallback replaces the visibility test", () => {
  const visibleButNo = createEnv();
  visibleButNo.MB.shouldLongPollCallback = () => false;
  visibleButNo.MB.subscribe("/a", noop);
  assert.match(visibleButNo.last().url, /dlp=t/);

  const hiddenButYes = createEnv({ hidden: true });
  hiddenButYes.MB.shouldLongPollCallback = () => 1; // truthy
  hiddenButYes.MB.subscribe("/a", noop);
  assert.doesNotMatch(hiddenButYes.last().url, /dlp=t/);
});

test("headers option: extra headers are sent and may override X-SILENCE-LOGGER", () => {
  const env = createEnv();
  env.MB.headers = { "X-CSRF-Token": "abc", "X-SILENCE-LOGGER": "false" };
  env.MB.subscribe("/a", noop);
  assert.equal(env.last().requestHeaders["X-CSRF-Token"], "abc");
  assert.equal(env.last().requestHeaders["X-SILENCE-LOGGER"], "false");
});

test("baseUrl option prefixes the request URL", () => {
  const env = createEnv();
  env.MB.baseUrl = "/forum/";
  env.MB.subscribe("/a", noop);
  assert.equal(env.last().url, "/forum/message-bus/" + env.MB.clientId + "/poll");
});

test("clientId option is used in the URL", () => {
  const env = createEnv();
  env.MB.clientId = "my-client";
  env.MB.subscribe("/a", noop);
  assert.equal(env.last().url, "/message-bus/my-client/poll");
});

test("ajax option: a custom function receives the documented options", () => {
  const env = createEnv({ adapter: false });
  const calls = [];
  env.MB.ajax = (o) => {
    calls.push(o);
    return { abort() {} };
  };
  env.MB.subscribe("/chat/x", noop, 5);
  assert.equal(calls.length, 1);
  const o = calls[0];
  assert.equal(o.type, "POST");
  assert.equal(o.async, true);
  assert.equal(o.dataType, "text");
  assert.equal(o.url, "/message-bus/" + env.MB.clientId + "/poll");
  assert.deepEqual({ ...o.data }, { "/chat/x": 5, __seq: 1 });
  assert.equal(o.messageBus.chunked, true);
  assert.equal(typeof o.messageBus.onProgressListener, "function");
  assert.equal(typeof o.xhr, "function");
  assert.equal(typeof o.success, "function");
  assert.equal(typeof o.error, "function");
  assert.equal(typeof o.complete, "function");
  // non-streaming requests expect JSON
  env.MB.enableChunkedEncoding = false;
  o.error({ status: 0 }, "abort");
  o.complete();
  env.advance(100);
  assert.equal(calls[1].dataType, "json");
  assert.equal(calls[1].headers["Dont-Chunk"], "true");
});

test("the xhr factory (used by jQuery) wires onprogress only for streaming requests", () => {
  const env = createEnv({ adapter: false });
  const calls = [];
  env.MB.ajax = (o) => {
    calls.push(o);
    return { abort() {} };
  };
  const got = [];
  env.MB.subscribe("/a", (d) => got.push(d));
  const xhr = calls[0].xhr();
  assert.equal(typeof xhr.onprogress, "function");
  xhr.headers({ "Content-Type": "text/plain; charset=utf-8" });
  xhr.responseText = JSON.stringify([{ global_id: 1, message_id: 1, channel: "/a", data: "x" }]) + "\r\n|\r\n";
  xhr.onprogress();
  assert.deepEqual(got, ["x"]);
});

test("localStorage __mbLastAjax is set to the time of each request start", () => {
  const env = createEnv();
  env.MB.subscribe("/a", noop);
  assert.equal(env.localStorage.getItem("__mbLastAjax"), String(env.clock.now));
});
