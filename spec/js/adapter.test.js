"use strict";
// assets/message-bus-ajax.js on its own: the ajax adapter contract.
const test = require("node:test");
const assert = require("node:assert/strict");
const { createEnv } = require("./harness");

function call(env, extra = {}) {
  const events = [];
  const handle = env.MB.ajax({
    url: "/message-bus/abc/poll",
    data: { "/chat/room-1": -1, "/n": 4, __seq: 7 },
    async: true,
    dataType: "json",
    type: "POST",
    headers: { "X-SILENCE-LOGGER": "true", "Content-Type": "text/evil", "Dont-Chunk": "true" },
    messageBus: { chunked: false, onProgressListener: () => events.push(["progress"]) },
    success: (data) => events.push(["success", data]),
    error: (xhr, text) => events.push(["error", xhr.status, text]),
    complete: () => events.push(["complete"]),
    ...extra,
  });
  return { handle, events, xhr: env.last() };
}

test("POSTs the form-encoded data with the given headers, then the form Content-Type", () => {
  const env = createEnv();
  const { xhr } = call(env);
  assert.equal(xhr.method, "POST");
  assert.equal(xhr.url, "/message-bus/abc/poll");
  assert.equal(xhr.body, "%2Fchat%2Froom-1=-1&%2Fn=4&__seq=7");
  assert.equal(xhr.requestHeaders["X-SILENCE-LOGGER"], "true");
  assert.equal(xhr.requestHeaders["Dont-Chunk"], "true");
  assert.equal(xhr.requestHeaders["Content-Type"], "application/x-www-form-urlencoded");
  assert.equal(xhr.headerOrder[xhr.headerOrder.length - 1], "Content-Type");
});

test("success gets the response text for 2xx and 304, then complete", () => {
  for (const code of [200, 204, 304]) {
    const env = createEnv();
    const { xhr, events } = call(env);
    xhr.respond(code, "[]");
    assert.deepEqual(events, [["success", "[]"], ["complete"]], "status " + code);
  }
});

test("error gets (xhr, statusText) for other statuses, then complete", () => {
  const env = createEnv();
  const { xhr, events } = call(env);
  xhr.respond(502, "bad", {}, "Bad Gateway");
  assert.deepEqual(events, [["error", 502, "Bad Gateway"], ["complete"]]);
});

test("a network error (status 0) is an error, not an abort", () => {
  const env = createEnv();
  const { xhr, events } = call(env);
  xhr.respond(0, "", {}, "");
  assert.equal(events[0][0], "error");
  assert.notEqual(events[0][2], "abort");
});

test("abort() through the handle reports text status 'abort' once, then complete once", () => {
  const env = createEnv();
  const { handle, events, xhr } = call(env);
  handle.abort();
  handle.abort();
  assert.equal(xhr.aborted, true);
  assert.deepEqual(events, [["error", 0, "abort"], ["complete"]]);
});

test("the progress listener is attached only for chunked requests", () => {
  const env = createEnv();
  const plain = call(env);
  assert.equal(plain.xhr.onprogress, null);
  const chunked = call(env, { messageBus: { chunked: true, onProgressListener: (x) => chunked.events.push(["progress", x === chunked.xhr]) } });
  chunked.xhr.stream("[]\r\n|\r\n");
  assert.deepEqual(chunked.events, [["progress", true]]);
});

test("MessageBus.xhrImplementation is used instead of XMLHttpRequest", () => {
  const env = createEnv();
  const made = [];
  env.MB.xhrImplementation = class extends env.FakeXHR {
    constructor() {
      super();
      made.push(this);
    }
  };
  call(env);
  assert.equal(made.length, 1);
  assert.equal(made[0], env.last());
});
