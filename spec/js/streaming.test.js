"use strict";
// Parsing of streamed (chunked) responses from responseText across progress events.
const test = require("node:test");
const assert = require("node:assert/strict");
const { createEnv, msg, status, record, SEP } = require("./harness");

const plain = (x) => JSON.parse(JSON.stringify(x));

function setup(opts) {
  const env = createEnv(opts);
  const got = [];
  env.MB.subscribe("/chat", (data, g, m) => got.push([data, g, m]));
  return { env, got, req: env.last() };
}

test("records are delivered as their separator arrives; first chunk [] is harmless", () => {
  const { env, got, req } = setup();
  req.stream("[]" + SEP);
  assert.deepEqual(got, []);
  req.stream(record([msg("/chat", 3, { body: "hi" }, 9)]));
  assert.deepEqual(plain(got), [[{ body: "hi" }, 9, 3]]);
  req.stream(record([msg("/chat", 4, "two", 10), msg("/chat", 5, "three", 11)]));
  assert.deepEqual(plain(got.map((g) => g[0])), [{ body: "hi" }, "two", "three"]);
  assert.equal(env.MB.callbacks[0].last_id, 5);
});

test("a record split across progress events, even inside the separator, is parsed once complete", () => {
  const { got, req } = setup();
  const text = record([msg("/chat", 1, "a")]) + record([msg("/chat", 2, "see you | later ✓")]);
  // cut inside the JSON, inside "\r\n|\r\n", and everywhere else: feed 3 chars at a time
  const cuts = [5, text.indexOf(SEP) + 2, text.indexOf(SEP) + 4];
  let pos = 0;
  for (const c of cuts) {
    req.stream(text.slice(pos, c));
    pos = c;
  }
  assert.deepEqual(got, [], "separator not complete yet");
  req.stream(text.slice(pos, pos + 1));
  pos += 1;
  assert.deepEqual(got.map((g) => g[0]), ["a"]);
  while (pos < text.length) {
    req.stream(text.slice(pos, pos + 3));
    pos += 3;
  }
  assert.deepEqual(got.map((g) => g[0]), ["a", "see you | later ✓"]);
});

test("byte-by-byte delivery yields each message exactly once", () => {
  const { got, req } = setup();
  const text = record([msg("/chat", 1, "x")]) + record([msg("/chat", 2, "y")]) + record([]);
  for (const ch of text) req.stream(ch);
  assert.deepEqual(got.map((g) => g[0]), ["x", "y"]);
});

test("an escaped separator \\r\\n||\\r\\n does not end a record", () => {
  const { env, got, req } = setup();
  // One record whose text contains the escaped separator; it is not valid JSON
  // after unescaping either (valid JSON can never contain the separator), so it
  // must be skipped as ONE malformed record, not split in two.
  req.stream('["a"\r\n||\r\n,"b"]' + SEP);
  assert.equal(env.MB.diagnostics().malformedChunks, 1);
  req.stream(record([msg("/chat", 7, "after")]));
  assert.deepEqual(got.map((g) => g[0]), ["after"]);
});

test("a malformed record is logged, counted, skipped; later records still arrive; no failure counted", () => {
  const { env, got, req } = setup();
  req.stream("[{not json" + SEP + record([msg("/chat", 2, "ok")]));
  assert.deepEqual(got.map((g) => g[0]), ["ok"]);
  assert.ok(env.logs.some((l) => /failed to parse/.test(l) && /not json/.test(l)));
  const d = env.MB.diagnostics();
  assert.equal(d.malformedChunks, 1);
  assert.equal(d.recentFailures, 0);
  assert.equal(d.totalAjaxFailures, 0);
});

test("a /__status record in the stream updates last ids", () => {
  const { env, req } = setup();
  req.stream(record([status({ "/chat": 42 })]));
  assert.equal(env.MB.callbacks[0].last_id, 42);
  req.stream(record([])).end();
  env.advance(15000);
  assert.match(env.last().body, /%2Fchat=42/);
});

test("streamed request ending normally: next request 100 ms later, in streaming mode again", () => {
  const { env, req } = setup();
  req.stream("[]" + SEP);
  env.advance(25000);
  req.stream("[]" + SEP).end();
  assert.equal(env.requests.length, 1);
  env.advance(99);
  assert.equal(env.requests.length, 1);
  env.advance(1);
  assert.equal(env.requests.length, 2);
  assert.equal(env.last().requestHeaders["Dont-Chunk"], undefined);
});

test("streamed messages do not count as 'got data': an immediate end waits callbackInterval", () => {
  const { env, got, req } = setup();
  req.stream(record([msg("/chat", 1, "m")])).end();
  assert.equal(got.length, 1);
  env.advance(14999);
  assert.equal(env.requests.length, 1);
  env.advance(1);
  assert.equal(env.requests.length, 2);
});

test("a non-streamed JSON answer to a streaming request is handled as plain JSON", () => {
  const { env, got, req } = setup();
  // server answered with content-type application/json (e.g. backlog without chunking)
  req.stream(JSON.stringify([msg("/chat", 3, "plain")]), { "Content-Type": "application/json; charset=utf-8" });
  assert.deepEqual(got, []); // not parsed as a stream
  req.end();
  assert.deepEqual(got.map((g) => g[0]), ["plain"]);
  // it counted as data, so the next request comes after minPollInterval
  env.advance(100);
  assert.equal(env.requests.length, 2);
});

test("content type must match exactly to switch streaming off", () => {
  const { got, req } = setup();
  req.stream(record([msg("/chat", 3, "s")]), { "Content-Type": "application/json" });
  assert.deepEqual(got.map((g) => g[0]), ["s"]);
});

test("firstChunkTimeout: no data within 3 s aborts; the next retryChunkedAfterRequests requests do not stream", () => {
  const { env } = setup();
  env.MB.retryChunkedAfterRequests = 2;
  env.advance(2999);
  assert.equal(env.requests[0].aborted, false);
  env.advance(1);
  assert.equal(env.requests[0].aborted, true);
  assert.equal(env.MB.diagnostics().totalAjaxFailures, 0, "abort is not a failure");
  env.advance(100); // minPollInterval after an abort
  assert.equal(env.requests.length, 2);
  assert.equal(env.requests[1].requestHeaders["Dont-Chunk"], "true");
  assert.doesNotMatch(env.requests[1].url, /dlp=t/, "still a long poll");
  env.requests[1].respondJSON([]);
  env.advance(15000);
  assert.equal(env.requests[2].requestHeaders["Dont-Chunk"], "true");
  env.requests[2].respondJSON([]);
  env.advance(15000);
  assert.equal(env.requests[3].requestHeaders["Dont-Chunk"], undefined, "streaming retried");
});

test("firstChunkTimeout option changes the wait", () => {
  const { env } = setup();
  env.MB.firstChunkTimeout = 500;
  // the option is read when a request starts: restart with a new subscription
  env.MB.subscribe("/other", () => {});
  env.advance(100);
  const req = env.last();
  env.advance(499);
  assert.equal(req.aborted, false);
  env.advance(1);
  assert.equal(req.aborted, true);
});

test("a progress event before the timeout keeps the stream", () => {
  const { env, req } = setup();
  env.advance(2000);
  req.stream("[]" + SEP);
  env.advance(20000);
  assert.equal(req.aborted, false);
  assert.equal(env.requests.length, 1);
});

test("default retryChunkedAfterRequests is 30 requests", () => {
  const { env } = setup();
  env.advance(3000); // first chunk timeout
  env.advance(100);
  for (let i = 0; i < 30; i++) {
    const r = env.last();
    assert.equal(r.requestHeaders["Dont-Chunk"], "true", "request " + (i + 2));
    r.respondJSON([msg("/chat", i + 1, i)]); // got data -> next in 100 ms
    env.advance(100);
  }
  assert.equal(env.last().requestHeaders["Dont-Chunk"], undefined);
});
