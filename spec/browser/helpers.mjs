// Shared pieces of the browser specs: a real Puma on a free port, headless
// Debian Chromium through playwright-core, and waiting on conditions with
// deadlines (never fixed sleeps).
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const CHROMIUM = "/usr/bin/chromium";
// Playwright's launch() always adds a fresh temporary --user-data-dir itself
// (it refuses one in `args`), and every test page gets its own context.
export const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
];

export const NATIVE_BUILT = fs.existsSync(path.join(ROOT, "lib/message_bus/message_bus_native.so"));

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls `fn` (sync or async) until it returns a truthy value, which is returned.
export async function waitFor(fn, { timeout = 5000, interval = 25, message = "condition" } = {}) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) {
      throw new Error(`timed out after ${timeout} ms waiting for ${message} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    }
    await sleep(interval);
  }
}

// Starts a server process on a free port and waits until `probe` answers.
// `argv(port)` gives the command line, `env` extra environment (an object, or
// a function of the port). Stopped by pid (server.stop()).
export async function startServer(argv, { env = {}, probe = "/", timeout = 30000, name = "server", port: fixedPort } = {}) {
  const port = fixedPort ?? (await freePort());
  const logFile = path.join(os.tmpdir(), `mb-browser-${name}-${port}.log`);
  const out = fs.openSync(logFile, "w");
  const [command, ...args] = argv(port);
  const proc = spawn(command, args, { cwd: ROOT, env: { ...process.env, ...(typeof env === "function" ? env(port) : env) }, stdio: ["ignore", out, out] });
  fs.closeSync(out);
  let exited = null;
  proc.on("exit", (code, signal) => (exited = { code, signal }));
  const base = `http://127.0.0.1:${port}`;
  const server = {
    port,
    base,
    logFile,
    pid: proc.pid,
    async stop() {
      if (exited) return;
      const gone = new Promise((r) => proc.once("exit", r));
      process.kill(proc.pid, "SIGTERM");
      const timer = setTimeout(() => !exited && process.kill(proc.pid, "SIGKILL"), 5000);
      await gone;
      clearTimeout(timer);
    },
  };
  try {
    await waitFor(
      async () => {
        if (exited) throw new Error(`${name} exited ${JSON.stringify(exited)}: ${fs.readFileSync(logFile, "utf8")}`);
        const res = await fetch(base + probe);
        return res.status < 500;
      },
      { timeout, interval: 100, message: `${name} on port ${port} (log: ${logFile})` },
    );
  } catch (e) {
    await server.stop();
    throw e;
  }
  return server;
}

// Puma (single mode) running the config.ru `app`.
export function startPuma(app, options = {}) {
  return startServer((port) => ["puma", "-b", `tcp://127.0.0.1:${port}`, "-t", "8:8", "-e", "test", app], {
    name: "puma",
    ...options,
  });
}

// bin/demo (the chat demo on Puma), listening on PORT.
export function startDemo(options = {}) {
  return startServer(() => ["bin/demo"], {
    name: "demo",
    probe: "/session",
    ...options,
    env: (port) => ({ PORT: String(port) }),
  });
}

export function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
}

// Makes document.hidden / visibilityState report `hidden` and fires
// visibilitychange, as a browser does when a tab goes to the background.
// Returns the page's Date.now() just before the event.
export function setHidden(page, hidden) {
  return page.evaluate((hidden) => {
    Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
    Object.defineProperty(document, "visibilityState", { configurable: true, get: () => (hidden ? "hidden" : "visible") });
    const at = Date.now();
    document.dispatchEvent(new Event("visibilitychange"));
    return at;
  }, hidden);
}
