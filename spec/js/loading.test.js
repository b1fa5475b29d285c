"use strict";
const test = require("node:test");
const assert = require("node:assert/strict");
const vm = require("node:vm");
const path = require("node:path");
const fs = require("node:fs");
const { pathToFileURL } = require("node:url");
const { createEnv, CLIENT_SRC, ADAPTER_SRC, ASSETS } = require("./harness");

test("sets the global MessageBus with a v4-shaped 32-hex client id", () => {
  const a = createEnv();
  const b = createEnv();
  assert.equal(typeof a.MB, "object");
  assert.match(a.MB.clientId, /^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}$/);
  assert.notEqual(a.MB.clientId, b.MB.clientId);
});

test("probes localStorage with mbTestLocalStorage and leaves nothing behind", () => {
  const env = createEnv();
  assert.deepEqual(env.storageLog.map((e) => e.slice(0, 2)), [
    ["set", "mbTestLocalStorage"],
    ["remove", "mbTestLocalStorage"],
  ]);
  assert.deepEqual(env.localStorage.keys(), []);
});

test("options have the documented defaults", () => {
  const { MB } = createEnv();
  assert.equal(MB.enableLongPolling, true);
  assert.equal(MB.enableChunkedEncoding, true);
  assert.equal(MB.callbackInterval, 15000);
  assert.equal(MB.backgroundCallbackInterval, 60000);
  assert.equal(MB.minPollInterval, 100);
  assert.equal(MB.maxPollInterval, 180000);
  assert.equal(MB.minHiddenPollInterval, 1500);
  assert.equal(MB.alwaysLongPoll, false);
  assert.equal(MB.shouldLongPollCallback, undefined);
  assert.equal(MB.firstChunkTimeout, 3000);
  assert.equal(MB.retryChunkedAfterRequests, 30);
  assert.equal(MB.baseUrl, "/");
  assert.deepEqual({ ...MB.headers }, {});
  assert.ok(Array.isArray(MB.callbacks) && MB.callbacks.length === 0);
  assert.equal(MB.longPoll, null);
});

test("ajax defaults to false without jQuery and is installed by the adapter", () => {
  const bare = createEnv({ adapter: false });
  assert.equal(bare.MB.ajax, false);
  const withAdapter = createEnv();
  assert.equal(typeof withAdapter.MB.ajax, "function");
});

test("ajax defaults to jQuery.ajax when jQuery is on the page", () => {
  const jqAjax = () => ({ abort() {} });
  const env = createEnv({ adapter: false, extraGlobals: { jQuery: { ajax: jqAjax } } });
  assert.equal(env.MB.ajax, jqAjax);
});

test("there is no noConflict() (not part of the 4.5 client)", () => {
  const { MB } = createEnv();
  assert.equal(MB.noConflict, undefined);
});

test("with an AMD loader it defines an anonymous module and still sets the global", () => {
  const calls = [];
  function define(deps, factory) {
    calls.push([deps, factory]);
  }
  define.amd = {};
  const ctx = vm.createContext({ define, setTimeout, clearTimeout, console });
  vm.runInContext(CLIENT_SRC, ctx);
  assert.equal(calls.length, 1);
  assert.equal(calls[0][0].length, 0);
  assert.equal(calls[0][1](), ctx.MessageBus);
  assert.equal(typeof ctx.MessageBus.subscribe, "function");
});

test("with CommonJS it sets module.exports", () => {
  const module = { exports: {} };
  const ctx = vm.createContext({ module, setTimeout, clearTimeout, console });
  vm.runInContext(CLIENT_SRC, ctx);
  assert.equal(module.exports, ctx.MessageBus);
  assert.equal(typeof module.exports.start, "function");
});

test("the ES module entry default-exports the MessageBus object", async () => {
  const mod = await import(pathToFileURL(path.join(ASSETS, "message-bus.mjs")).href);
  assert.equal(typeof mod.default.subscribe, "function");
  assert.equal(mod.default, globalThis.MessageBus);
  delete globalThis.MessageBus;
});

test("the ES module build is self-contained: an AMD loader on the page does not capture it", async () => {
  let defined = 0;
  globalThis.define = Object.assign(() => defined++, { amd: {} });
  try {
    // A query string makes it a fresh module instance.
    const mod = await import(pathToFileURL(path.join(ASSETS, "message-bus.mjs")).href + "?amd");
    assert.equal(defined, 0);
    assert.equal(typeof mod.default.subscribe, "function");
    assert.equal(mod.default, globalThis.MessageBus);
    assert.doesNotMatch(fs.readFileSync(path.join(ASSETS, "message-bus.mjs"), "utf8"), /^import /m);
  } finally {
    delete globalThis.define;
    delete globalThis.MessageBus;
  }
});

test("the ajax adapter throws when MessageBus is not loaded", () => {
  const ctx = vm.createContext({ console });
  assert.throws(() => vm.runInContext(ADAPTER_SRC, ctx), /MessageBus/);
});

test("without an ajax function the first request throws a clear Error", () => {
  const env = createEnv({ adapter: false });
  assert.throws(
    () => env.MB.subscribe("/a", () => {}),
    (e) => e.constructor.name === "Error" && /Either jQuery or the ajax adapter must be loaded/.test(e.message)
  );
});

test("works without document and without localStorage (e.g. a worker)", () => {
  const env = createEnv({ document: false, localStorage: false });
  env.MB.subscribe("/a", () => {});
  assert.equal(env.requests.length, 1);
  assert.doesNotMatch(env.last().url, /dlp=t/); // no document: counts as visible
});
