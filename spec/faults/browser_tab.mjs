// A real browser tab for the fault specs (spec/faults/epoch_reset_spec.rb):
// headless Chromium (playwright-core, spec/browser/helpers.mjs) opens the
// page of spec/browser/bus_app.ru at BASE, subscribes to CHANNELS from id 0
// with the browser client, and records every message and every onReset.
//
//   node spec/faults/browser_tab.mjs BASE /a,/b
//
// Prints {"ready":true} once started, then answers each line on stdin:
// "state" -> {"got":{channel:[data...]},"resets":{channel:n},"events":[[ms, channel
// or "reset", data or channel]...],"errors":[...]};
// "quit" (or the end of stdin) closes the browser and exits.
import readline from "node:readline";
import { launchBrowser } from "../browser/helpers.mjs";

const [base, channelList] = process.argv.slice(2);
const channels = channelList.split(",");
const browser = await launchBrowser();
try {
  const page = await (await browser.newContext()).newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`${base}/`);
  await page.evaluate((channels) => {
    window.got = {};
    window.resets = {};
    window.events = [];
    MessageBus.onReset = (channel) => {
      window.resets[channel] = (window.resets[channel] || 0) + 1;
      window.events.push([Date.now(), "reset", channel]);
    };
    for (const channel of channels) {
      window.got[channel] = [];
      MessageBus.subscribe(channel, (data) => {
        window.got[channel].push(data);
        window.events.push([Date.now(), channel, data]);
      }, 0);
    }
    MessageBus.start();
  }, channels);
  console.log(JSON.stringify({ ready: true }));
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (line === "quit") break;
    if (line === "state") {
      const state = await page.evaluate(() => ({ got: window.got, resets: window.resets, events: window.events }));
      console.log(JSON.stringify({ ...state, errors }));
    }
  }
} finally {
  await browser.close();
}
process.exit(0); // stdin may still be open
