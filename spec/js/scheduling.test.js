"use strict";
// When the next request starts: intervals, backoff, rate limits, hidden tabs.
const test = require("node:test");
const assert = require("node:assert/strict");
const { createEnv, msg } = require("./harness");

const noop = () => {};

// Starts a non-streaming client (long-poll or polling) with one subscription.
function client(opts = {}, setup = () => {}) {
  const env = createEnv(opts);
  env.MB.enableChunkedEncoding = false;
  setup(env.MB);
  env.MB.subscribe("/a", noop);
  return env;
}

// Returns the delay (ms, from now) until the next request is sent, or null.
function nextRequestDelay(env, limit = 10 * 60 * 1000) {
  const before = env.requests.length;
  const start = env.clock.now;
  for (let t = 0; t < limit; t += 50) {
    env.advance(50);
    if (env.requests.length > before) return env.last().sentAt - start;
  }
  return null;
}

test("long poll with an empty immediate answer: next request callbackInterval after the previous start", () => {
  const env = client();
  env.advance(2000);
  env.last().respondJSON([]);
  assert.equal(nextRequestDelay(env), 13000);
});

test("callbackInterval option changes that spacing", () => {
  const env = client({}, (MB) => (MB.callbackInterval = 4000));
  env.last().respondJSON([]);
  assert.equal(nextRequestDelay(env), 4000);
});

test("long poll that returned data: next request after minPollInterval", () => {
  const env = client();
  env.last().respondJSON([msg("/a", 1, "x")]);
  assert.equal(nextRequestDelay(env), 100);
});

test("minPollInterval option changes that delay", () => {
  const env = client({}, (MB) => (MB.minPollInterval = 700));
  env.last().respondJSON([msg("/a", 1, "x")]);
  assert.equal(nextRequestDelay(env), 700);
});

test("a long poll held by the server past callbackInterval is followed after 100 ms", () => {
  const env = client();
  env.advance(25000);
  env.last().respondJSON([]);
  assert.equal(nextRequestDelay(env), 100);
});

test("hidden page polls every backgroundCallbackInterval, even when it got data", () => {
  const env = client({ hidden: true });
  env.last().respondJSON([msg("/a", 1, "x")]);
  assert.equal(nextRequestDelay(env), 60000);
  assert.match(env.last().url, /dlp=t/);
});

test("backgroundCallbackInterval option changes the polling spacing", () => {
  const env = client({ hidden: true }, (MB) => (MB.backgroundCallbackInterval = 5000));
  env.last().respondJSON([]);
  assert.equal(nextRequestDelay(env), 5000);
});

test("repeated 500s: normal spacing twice, then linear backoff capped at maxPollInterval", () => {
  const env = client();
  const delays = [];
  for (let i = 0; i < 16; i++) {
    env.last().respond(500, "Internal Server Error", { "Content-Type": "text/html" }, "Internal Server Error");
    delays.push(nextRequestDelay(env));
  }
  assert.deepEqual(delays, [
    15000, 15000, 45000, 60000, 75000, 90000, 105000, 120000, 135000, 150000, 165000, 180000,
    180000, 180000, 180000, 180000,
  ]);
  assert.equal(env.MB.diagnostics().totalAjaxFailures, 16);
});

test("maxPollInterval option caps the backoff", () => {
  const env = client({}, (MB) => (MB.maxPollInterval = 50000));
  const delays = [];
  for (let i = 0; i < 6; i++) {
    env.last().respond(500, "");
    delays.push(nextRequestDelay(env));
  }
  assert.deepEqual(delays, [15000, 15000, 45000, 50000, 50000, 50000]);
});

test("network errors (status 0) back off the same way and never loop tightly", () => {
  const env = client();
  for (let i = 0; i < 5; i++) env.last().respond(0, "", {}, ""), nextRequestDelay(env);
  const before = env.requests.length;
  env.last().respond(0, "", {}, "");
  env.advance(60000);
  assert.equal(env.requests.length, before, "no request within 60 s after 6 failures");
});

test("a success resets the failure counter", () => {
  const env = client();
  for (let i = 0; i < 4; i++) {
    env.last().respond(500, "");
    nextRequestDelay(env);
  }
  env.last().respondJSON([]);
  assert.equal(env.MB.diagnostics().recentFailures, 0);
  assert.equal(nextRequestDelay(env), 15000);
  env.last().respond(500, "");
  assert.equal(nextRequestDelay(env), 15000, "first failure after a success: no backoff");
});

test("429 with Retry-After waits that many seconds and is not a failure", () => {
  const env = client();
  env.last().respond(429, "", { "Retry-After": "40" }, "Too Many Requests");
  assert.equal(nextRequestDelay(env), 40000);
  assert.equal(env.MB.diagnostics().totalAjaxFailures, 0);
});

test("429 waits at least 15 s (short or missing Retry-After)", () => {
  const env = client();
  env.last().respond(429, "", { "Retry-After": "2" });
  assert.equal(nextRequestDelay(env), 15000);
  env.last().respond(429, "", {});
  assert.equal(nextRequestDelay(env), 15000);
});

test("429 delay is at least minPollInterval", () => {
  const env = client({}, (MB) => (MB.minPollInterval = 20000));
  env.last().respond(429, "", { "Retry-After": "1" });
  assert.equal(nextRequestDelay(env), 20000);
});

test("hidden tab: no request while another tab started one less than minHiddenPollInterval ago", () => {
  const env = createEnv({ hidden: true });
  env.localStorage.setItem("__mbLastAjax", String(env.clock.now - 200));
  env.MB.subscribe("/a", noop);
  assert.equal(env.requests.length, 0);
  env.advance(1000);
  assert.equal(env.requests.length, 0, "still within 1500 ms of the other tab");
  // The tab looks again every 500-1000 ms (at random): by 1300 + 1000 ms it
  // has looked once past the 1500 ms, whatever the draws.
  env.advance(1300);
  assert.equal(env.requests.length, 1);
  assert.match(env.last().url, /dlp=t/);
});

test("minHiddenPollInterval option changes the stagger", () => {
  const env = createEnv({ hidden: true });
  env.MB.minHiddenPollInterval = 10000;
  env.localStorage.setItem("__mbLastAjax", String(env.clock.now));
  env.MB.subscribe("/a", noop);
  env.advance(9000);
  assert.equal(env.requests.length, 0);
  env.advance(2000);
  assert.equal(env.requests.length, 1);
});

test("a visible tab ignores other tabs' __mbLastAjax", () => {
  const env = createEnv();
  env.localStorage.setItem("__mbLastAjax", String(env.clock.now - 10));
  env.MB.subscribe("/a", noop);
  assert.equal(env.requests.length, 1);
});

test("a __mbLastAjax in the future does not block a hidden tab", () => {
  const env = createEnv({ hidden: true });
  env.localStorage.setItem("__mbLastAjax", String(env.clock.now + 100000));
  env.MB.subscribe("/a", noop);
  assert.equal(env.requests.length, 1);
});

test("becoming visible cancels the background wait and long-polls immediately", () => {
  const env = createEnv({ hidden: true });
  env.MB.subscribe("/a", noop);
  env.last().respondJSON([]);
  env.advance(5000);
  assert.equal(env.requests.length, 1);
  env.document.setHidden(false);
  assert.equal(env.requests.length, 2);
  assert.doesNotMatch(env.last().url, /dlp=t/);
  env.document.setHidden(true);
  env.document.setHidden(false);
  assert.equal(env.requests.length, 2, "no second request while one is in flight");
});

test("after stop() the visibility listener no longer triggers requests", () => {
  const env = createEnv({ hidden: true });
  env.MB.subscribe("/a", noop);
  env.last().respondJSON([]);
  env.MB.stop();
  env.document.setHidden(false);
  env.advance(120000);
  assert.equal(env.requests.length, 1);
});

test("without the Page Visibility API, document.hasFocus() decides (called, not referenced)", () => {
  const env = createEnv();
  delete env.document.hidden;
  let focused = false;
  env.document.hasFocus = () => focused;
  env.MB.subscribe("/a", noop);
  assert.match(env.last().url, /dlp=t/, "unfocused page polls");
  env.last().respondJSON([]);
  focused = true;
  env.advance(60000);
  assert.doesNotMatch(env.last().url, /dlp=t/, "focused page long-polls");
});

test("completion after stop() schedules nothing", () => {
  const env = client();
  const req = env.last();
  env.MB.stop();
  req.respondJSON([msg("/a", 1, "late")]);
  env.advance(600000);
  assert.equal(env.requests.length, 1);
});
