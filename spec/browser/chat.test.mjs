// The chat demo (examples/chat) as `bin/demo` starts it — real Puma, the gem's
// middleware on the memory backend — driven in three Chromium pages, one per
// user (separate contexts: separate cookies, separate localStorage).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { NATIVE_BUILT, startDemo, launchBrowser, waitFor } from "./helpers.mjs";

const skip = !NATIVE_BUILT && "needs the built extension (rake compile)";
let server;
let browser;

before(async () => {
  if (skip) return;
  // bin/demo rebuilds the extension only when it is older than the Rust sources
  server = await startDemo({ timeout: 240000 });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

async function login(name) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${server.base}/`);
  await page.fill("#name", name);
  await page.click("#login-form button");
  await page.waitForSelector("#chat:not([hidden])");
  // subscribed to the room, the private channel and presence
  await waitFor(() => page.evaluate(() => MessageBus.callbacks.length === 3 && MessageBus.callbacks.every((c) => c.last_id >= 0)), {
    message: `${name}'s subscriptions`,
  });
  return page;
}

// "who: text" for every line of a list (#messages, #private) or the user names
const texts = (page, list) =>
  page.$$eval(`#${list} li`, (lis) =>
    lis.map((li) => (li.querySelector(".who") ? `${li.querySelector(".who").textContent}: ${li.childNodes[1].textContent}` : li.textContent)),
  );
const say = async (page, text) => {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
};
const seen = (page, list, text) =>
  page.waitForSelector(`#${list} li:has-text(${JSON.stringify(text)})`, { timeout: 5000 });
const target = async (page, name) => {
  await page.click(`#users li:text-is(${JSON.stringify(name)})`);
  await page.waitForSelector(`#target:has-text("to ${name}")`);
};

test("bin/demo: users chat, private messages reach only their addressee, history after reload", { skip }, async () => {
  const alice = await login("alice");
  const bob = await login("bob");
  const carol = await login("carol");
  const everyone = [alice, bob, carol];

  // presence: everyone sees everyone (published on /presence)
  for (const page of everyone) {
    await waitFor(async () => (await texts(page, "users")).length === 3, { message: "three users listed" });
  }
  assert.deepEqual(await texts(alice, "users"), ["alice (you)", "bob", "carol"]);

  // room messages reach every page once, in order
  await say(alice, "hello from alice");
  for (const page of everyone) await seen(page, "messages", "hello from alice");
  await say(bob, "hi alice ✓ <b>not bold</b>");
  // bob's message is published before carol sends (two pages' POSTs would race)
  await seen(bob, "messages", "hi alice");
  await say(carol, "hey both");
  for (const page of everyone) await seen(page, "messages", "hey both");
  for (const page of everyone) {
    assert.deepEqual(await texts(page, "messages"), ["alice: hello from alice", "bob: hi alice ✓ <b>not bold</b>", "carol: hey both"]);
  }
  assert.equal(await bob.locator("#messages b").count(), 0, "rendered as text, not HTML");
  // The demo runs over WebSocket (the default transport), identity by cookie.
  for (const page of everyone) assert.equal(await page.evaluate(() => MessageBus.diagnostics().transport), "websocket");

  // bob → alice in private; then bob → carol; then bob → alice again
  await target(bob, "alice");
  await say(bob, "psst alice");
  await seen(alice, "private", "psst alice");
  await seen(bob, "private", "psst alice"); // the sender's own copy
  await target(bob, "carol");
  await say(bob, "hi carol");
  await target(bob, "alice");
  await say(bob, "second for alice");
  await seen(carol, "private", "hi carol");
  await seen(alice, "private", "second for alice");
  // /private is one channel: whatever came before a received message was delivered already
  assert.deepEqual(await texts(alice, "private"), ["bob → you: psst alice", "bob → you: second for alice"]);
  assert.deepEqual(await texts(carol, "private"), ["bob → you: hi carol"]);
  assert.deepEqual(await texts(bob, "private"), [
    "you → alice: psst alice",
    "you → carol: hi carol",
    "you → alice: second for alice",
  ]);
  // private messages never show up in the room
  for (const page of everyone) assert.equal((await texts(page, "messages")).length, 3);

  // history after reload: room from MessageBus.backlog, private filtered by user
  await carol.reload();
  await seen(carol, "messages", "hey both");
  await seen(carol, "private", "hi carol");
  assert.equal((await texts(carol, "messages")).length, 3);
  assert.deepEqual(await texts(carol, "private"), ["bob → you: hi carol"]);
  await alice.reload();
  await seen(alice, "private", "second for alice");
  assert.deepEqual(await texts(alice, "private"), ["bob → you: psst alice", "bob → you: second for alice"]);

  // and live delivery resumes after the reload, without duplicates
  await waitFor(() => carol.evaluate(() => MessageBus.callbacks.length === 3 && MessageBus.callbacks.every((c) => c.last_id >= 0)));
  await say(alice, "welcome back");
  for (const page of everyone) await seen(page, "messages", "welcome back");
  for (const page of everyone) assert.equal((await texts(page, "messages")).length, 4);
});
