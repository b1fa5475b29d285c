// Makes docs/demo.png: the chat demo (bin/demo) in use, alice's and bob's
// tabs side by side — a few room messages and a private message.
// Not part of the test suite:  node spec/browser/screenshot.mjs [out.png]
import fs from "node:fs";
import path from "node:path";
import { ROOT, startDemo, launchBrowser, waitFor } from "./helpers.mjs";

const out = path.resolve(process.argv[2] || path.join(ROOT, "docs/demo.png"));
const VIEWPORT = { width: 900, height: 480 };

const server = await startDemo({ timeout: 240000 });
const browser = await launchBrowser();
try {
  const login = async (name) => {
    const context = await browser.newContext({ viewport: VIEWPORT });
    const page = await context.newPage();
    await page.goto(`${server.base}/`);
    await page.fill("#name", name);
    await page.click("#login-form button");
    await page.waitForSelector("#chat:not([hidden])");
    await waitFor(() => page.evaluate(() => MessageBus.callbacks.length === 3 && MessageBus.callbacks.every((c) => c.last_id >= 0)));
    return page;
  };
  const say = async (page, text) => {
    await page.fill("#text", text);
    await page.press("#text", "Enter");
    await page.waitForSelector(`#messages li:has-text(${JSON.stringify(text)}), #private li:has-text(${JSON.stringify(text)})`);
  };

  const alice = await login("alice");
  const bob = await login("bob");
  await login("carol");
  for (const page of [alice, bob]) await waitFor(async () => (await page.locator("#users li").count()) === 3);

  await say(alice, "Hi all! Is the new message bus deployed?");
  await say(bob, "Yes, since this morning — long polls are held by Rust now.");
  await say(alice, "Nice, the chat feels instant.");
  await say(bob, "Streaming over one chunked request per tab ✓");
  await bob.click('#users li:text-is("alice")');
  await say(bob, "Lunch at 12:30?");
  await alice.waitForSelector('#private li:has-text("Lunch at 12:30?")');
  await alice.click('#users li:text-is("bob")');
  await say(alice, "Sure, see you there");
  await bob.waitForSelector('#private li:has-text("see you there")');
  await bob.click('#users li:text-is("alice")'); // back to the room for bob
  await bob.mouse.move(450, 5);
  for (const page of [alice, bob]) {
    await waitFor(() => page.evaluate(() => document.getElementById("bus-status").textContent.includes("connected")));
  }

  const shots = [];
  for (const page of [alice, bob]) shots.push((await page.screenshot()).toString("base64"));

  // Both tabs side by side on one image.
  const sheet = await browser.newPage({ viewport: { width: VIEWPORT.width * 2 + 48, height: VIEWPORT.height + 64 } });
  await sheet.setContent(`<!doctype html><html><body style="margin:0;padding:12px 16px;background:#d9dde0;
      font:14px system-ui,sans-serif;color:#333;display:flex;gap:16px">
    ${["alice", "bob"]
      .map(
        (name, i) => `<figure style="margin:0"><figcaption style="margin:0 0 6px">${name}'s tab</figcaption>
        <img style="display:block;border-radius:4px;box-shadow:0 1px 4px #0004" src="data:image/png;base64,${shots[i]}"></figure>`,
      )
      .join("")}
    </body></html>`);
  await sheet.screenshot({ path: out });
  console.log(`${out}: ${fs.statSync(out).size} bytes`);
} finally {
  await browser.close();
  await server.stop();
}
