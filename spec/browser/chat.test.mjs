// Skeleton: two users in the chat demo, real Puma, real Chromium.
// Run with spec/browser/run once the Rack middleware has landed.
import test from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run",
];

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

async function startPuma(port) {
  const proc = spawn("puma", ["-b", `tcp://127.0.0.1:${port}`, path.join(ROOT, "examples/chat/config.ru")], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const deadline = Date.now() + 30000;
  for (;;) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/session`);
      if (res.ok) return proc;
    } catch {}
    if (Date.now() > deadline) {
      proc.kill();
      throw new Error("puma did not start");
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function login(browser, base, name) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(base);
  await page.fill("#name", name);
  await page.click("#login-form button");
  await page.waitForSelector("#chat:not([hidden])");
  return page;
}

const READY =
  fs.existsSync(path.join(ROOT, "lib/message_bus/rack/middleware.rb")) &&
  fs.existsSync(path.join(ROOT, "lib/message_bus/message_bus_native.so"));

test("two users: room messages stream to both, private messages only to the addressee", { skip: !READY && "needs the middleware and the built extension" }, async (t) => {
  const port = await freePort();
  const puma = await startPuma(port);
  t.after(() => puma.kill());
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: CHROMIUM_ARGS });
  t.after(() => browser.close());
  const base = `http://127.0.0.1:${port}/`;

  const alice = await login(browser, base, "alice");
  const bob = await login(browser, base, "bob");
  const carol = await login(browser, base, "carol");

  await alice.fill("#text", "hello from alice");
  await alice.press("#text", "Enter");
  for (const page of [alice, bob, carol]) {
    await page.waitForSelector("#messages li:has-text('hello from alice')", { timeout: 5000 });
  }

  await bob.click("#users li:has-text('alice')");
  await bob.fill("#text", "psst alice");
  await bob.press("#text", "Enter");
  await alice.waitForSelector("#private li:has-text('psst alice')", { timeout: 5000 });
  await carol.waitForTimeout(1000);
  assert.equal(await carol.locator("#private li").count(), 0);

  // history on reload comes from MessageBus.backlog
  await carol.reload();
  await carol.waitForSelector("#messages li:has-text('hello from alice')", { timeout: 5000 });
});
