// The ES module build (assets/message-bus.mjs, what importmap and npm
// `import` users load) in headless Chromium against the real middleware:
// imported through an import map together with the ajax adapter, it sets
// the global the adapter needs and delivers published messages in order.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { ROOT, NATIVE_BUILT, startPuma, launchBrowser, waitFor } from "./helpers.mjs";

const skip = !NATIVE_BUILT && "needs the built extension (rake compile)";

describe("the ES module build in a page", { skip }, () => {
  let browser;
  let server;
  before(async () => {
    browser = await launchBrowser();
    server = await startPuma(path.join(ROOT, "spec/browser/bus_app.ru"), { env: { MB_LONG_POLLING_INTERVAL: "1000" } });
  });
  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  test("import MessageBus from an import map, then the ajax adapter: messages arrive in order", async () => {
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(`${server.base}/esm`);
    await waitFor(() => page.evaluate(() => window.imported !== undefined), { message: "module evaluated" });
    assert.deepEqual(
      await page.evaluate(() => [window.imported === window.MessageBus, typeof MessageBus.ajax, typeof MessageBus.subscribe]),
      [true, "function", "function"],
    );

    await page.evaluate(() => {
      MessageBus.callbackInterval = 300;
      MessageBus.subscribe("/esm", (data) => window.got.push(data), 0);
    });
    for (const data of ["one", "two", "three"]) {
      const res = await fetch(`${server.base}/publish`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ channel: "/esm", data }),
      });
      assert.equal(res.status, 200);
    }
    const got = await waitFor(async () => {
      const list = await page.evaluate(() => window.got);
      return list.length >= 3 && list;
    }, { timeout: 10000, message: "three messages" });
    assert.deepEqual(got, ["one", "two", "three"]);
    assert.deepEqual(errors, []);
    await page.close();
  });
});
