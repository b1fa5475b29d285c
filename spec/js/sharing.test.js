"use strict";
// One connection per browser: tabs (envs sharing a fake BroadcastChannel and
// Web Locks) elect a leader that alone talks to the (fake) server, for every
// tab's subscriptions; each tab delivers its own messages once, in order.
const test = require("node:test");
const assert = require("node:assert/strict");
const { createEnv, createGroupHub, msg, status } = require("./harness");

// A tab of the browser `hub`. Streaming off: every answer ends a request.
function tab(hub, setup) {
  const env = createEnv({ group: hub, progress: false });
  env.MB.callbackInterval = 1000;
  if (setup) setup(env.MB);
  return env;
}

const seen = (env) => env.MB.__seen || (env.MB.__seen = []);
const record = (env, channel, lastId) =>
  env.MB.subscribe(channel, (data, g, id) => seen(env).push([channel, data, id]), lastId);

// What the last request of `env` asked for, without __seq.
function asked(env) {
  return Object.fromEntries(env.last().form.filter(([k]) => k !== "__seq").map(([k, v]) => [k, Number(v)]));
}

async function leaderAndFollower() {
  const hub = createGroupHub();
  const a = tab(hub);
  const b = tab(hub);
  record(a, "/a", 0);
  await hub.settle();
  record(b, "/b", 5);
  await hub.settle();
  return { hub, a, b };
}

test("the first tab leads; the other holds no connection and its subscriptions go through the leader", async () => {
  const { hub, a, b } = await leaderAndFollower();
  assert.equal(a.MB.diagnostics().sharing, "leader");
  assert.equal(b.MB.diagnostics().sharing, "follower");
  a.advance(100);
  await hub.settle();
  assert.equal(b.requests.length, 0);
  assert.deepEqual(asked(a), { "/a": 0, "/b": 5 });
  assert.equal(a.pending().length, 1, "one request for both tabs");
  assert.equal(a.MB.clientId, b.MB.clientId, "one client id for the browser");
});

test("each tab gets its own channels' messages once, in order", async () => {
  const { hub, a, b } = await leaderAndFollower();
  a.advance(100);
  await hub.settle();
  a.last().respondJSON([msg("/a", 1, "a1"), msg("/b", 6, "b6"), msg("/b", 7, "b7")]);
  await hub.settle();
  assert.deepEqual(seen(a), [["/a", "a1", 1]]);
  assert.deepEqual(seen(b), [
    ["/b", "b6", 6],
    ["/b", "b7", 7],
  ]);
  // The next request starts from where every tab is.
  a.advance(200);
  await hub.settle();
  assert.deepEqual(asked(a), { "/a": 1, "/b": 7 });
});

test("a tab subscribing from an older id makes the leader ask again from it; nobody gets a message twice", async () => {
  const { hub, a, b } = await leaderAndFollower();
  a.advance(100);
  await hub.settle();
  a.last().respondJSON([msg("/a", 1, "a1"), msg("/a", 2, "a2")]);
  await hub.settle();
  a.advance(200);
  await hub.settle();
  const before = a.requests.length;
  record(b, "/a", 0); // the follower wants /a from the start
  await hub.settle();
  a.advance(200);
  await hub.settle();
  assert.ok(a.requests.length > before);
  assert.equal(asked(a)["/a"], 0);
  a.last().respondJSON([msg("/a", 1, "a1"), msg("/a", 2, "a2"), msg("/a", 3, "a3")]);
  await hub.settle();
  assert.deepEqual(seen(a), [
    ["/a", "a1", 1],
    ["/a", "a2", 2],
    ["/a", "a3", 3],
  ]);
  assert.deepEqual(
    seen(b).filter(([c]) => c === "/a"),
    [
      ["/a", "a1", 1],
      ["/a", "a2", 2],
      ["/a", "a3", 3],
    ],
  );
});

test("a follower's subscription from now is resolved by a short poll of its own, then goes through the leader", async () => {
  const hub = createGroupHub();
  const a = tab(hub);
  const b = tab(hub);
  record(a, "/a", 0);
  await hub.settle();
  record(b, "/news"); // -1: from now
  await hub.settle();
  const resolve = b.last();
  assert.match(resolve.url, /\/poll\?dlp=t$/);
  assert.deepEqual(resolve.form.filter(([k]) => k !== "__seq"), [["/news", "-1"]]);
  resolve.respondJSON([status({ "/news": 40 })]);
  await hub.settle();
  a.advance(200);
  await hub.settle();
  assert.equal(asked(a)["/news"], 40);
  assert.equal(b.requests.length, 1, "no other request from the follower");
});

test("a status answering a request made before a tab's state reached the leader does not move that tab", async () => {
  const { hub, a, b } = await leaderAndFollower();
  a.advance(100);
  await hub.settle();
  record(b, "/b", 2); // lower than the request in flight (from 5): its state is on its way
  // Meanwhile the old request answers: the bus is at 9, nothing for /b after 5.
  a.last().respondJSON([status({ "/b": 9 })]);
  await hub.settle();
  const ids = () => [...b.MB.callbacks].map((c) => c.last_id).sort((x, y) => x - y);
  assert.deepEqual(ids(), [2, 5], "the old answer's status did not move the follower");
  a.advance(200);
  await hub.settle();
  assert.equal(asked(a)["/b"], 2, "asked again from the lowest position");
  a.last().respondJSON([msg("/b", 3, "b3"), status({ "/b": 9 })]);
  await hub.settle();
  assert.deepEqual(seen(b), [["/b", "b3", 3]], "once, to the callback that wanted it");
  assert.deepEqual(ids(), [9, 9], "the new answer's status moves both");
})

test("when the leader tab closes, another leads and resumes from each subscription's last id", async () => {
  const { hub, a, b } = await leaderAndFollower();
  a.advance(100);
  await hub.settle();
  a.last().respondJSON([msg("/a", 1, "a1"), msg("/b", 6, "b6")]);
  await hub.settle();
  const seqBefore = Number(a.requests.at(-1).form.find(([k]) => k === "__seq")[1]);
  a.tab.close();
  await hub.settle();
  assert.equal(b.MB.diagnostics().sharing, "leader");
  b.advance(200);
  await hub.settle();
  assert.deepEqual(asked(b), { "/b": 6 });
  const seqAfter = Number(b.last().form.find(([k]) => k === "__seq")[1]);
  assert.ok(seqAfter > seqBefore, `__seq ${seqAfter} follows ${seqBefore}`);
  b.last().respondJSON([msg("/b", 6, "b6"), msg("/b", 7, "b7")]);
  await hub.settle();
  assert.deepEqual(seen(b), [
    ["/b", "b6", 6],
    ["/b", "b7", 7],
  ]);
});

test("a tab that stops leaves: the leader stops asking for its channels' positions", async () => {
  const { hub, a, b } = await leaderAndFollower();
  b.MB.stop();
  await hub.settle();
  a.advance(100);
  await hub.settle();
  assert.deepEqual(asked(a), { "/a": 0 });
});

test("the leader long-polls while any tab of the group is visible", async () => {
  const hub = createGroupHub();
  const a = createEnv({ group: hub, progress: false, hidden: true });
  const b = createEnv({ group: hub, progress: false });
  record(a, "/a", 0);
  await hub.settle();
  record(b, "/b", 0);
  await hub.settle();
  a.advance(100);
  await hub.settle();
  assert.doesNotMatch(a.last().url, /dlp=t/);
  b.document.setHidden(true);
  await hub.settle();
  a.last().respondJSON([]);
  a.advance(60000);
  await hub.settle();
  assert.match(a.last().url, /dlp=t/);
});

test("shareConnection = false, or other headers: each tab its own connection", async () => {
  const hub = createGroupHub();
  const a = tab(hub, (MB) => (MB.shareConnection = false));
  const b = tab(hub, (MB) => (MB.shareConnection = false));
  record(a, "/a", 0);
  record(b, "/b", 0);
  await hub.settle();
  assert.equal(a.requests.length, 1);
  assert.equal(b.requests.length, 1);
  assert.equal(a.MB.diagnostics().sharing, "off");

  const other = createGroupHub();
  const c = tab(other, (MB) => (MB.headers = { "X-User": "1" }));
  const d = tab(other, (MB) => (MB.headers = { "X-User": "2" }));
  record(c, "/c", 0);
  record(d, "/d", 0);
  await other.settle();
  c.advance(200);
  d.advance(200);
  await other.settle();
  assert.equal(c.MB.diagnostics().sharing, "leader");
  assert.equal(d.MB.diagnostics().sharing, "leader");
  assert.notEqual(c.MB.clientId, d.MB.clientId);
});

test("over a WebSocket: a follower's new channel is a subscribe on the open socket; a lower position reopens it", async () => {
  const hub = createGroupHub();
  const a = createEnv({ group: hub, webSocket: true });
  const b = createEnv({ group: hub, webSocket: true });
  record(a, "/a", 0);
  await hub.settle();
  a.advance(100);
  await hub.settle();
  a.socket().open();
  assert.deepEqual(a.socket().sent, [{ subscribe: { "/a": 0 } }]);
  record(b, "/b", 4);
  await hub.settle();
  assert.deepEqual(a.socket().sent.at(-1), { subscribe: { "/b": 4 } });
  a.socket().receive([msg("/b", 5, "b5"), msg("/b", 6, "b6")]);
  await hub.settle();
  assert.deepEqual(seen(b), [
    ["/b", "b5", 5],
    ["/b", "b6", 6],
  ]);
  assert.equal(b.sockets.length, 0, "the follower opens no socket");

  record(b, "/b", 1); // lower than the socket's position on /b (6)
  await hub.settle();
  assert.equal(a.sockets[0].closedWith.code, 1000);
  a.advance(10);
  await hub.settle();
  assert.equal(a.sockets.length, 2);
  a.socket().open();
  assert.deepEqual(a.socket().sent, [{ subscribe: { "/a": 0, "/b": 1 } }]);
  a.socket().receive([msg("/b", 2, "b2"), msg("/b", 5, "b5"), msg("/b", 6, "b6")]);
  await hub.settle();
  // The first /b callback (at 6) gets nothing again; the new one (from 1) all three.
  assert.deepEqual(
    seen(b).map(([, d]) => d),
    ["b5", "b6", "b2", "b5", "b6"],
  );
});

test("a tab alone leads and asks the server 'from now' itself: no extra request", async () => {
  const hub = createGroupHub();
  const a = tab(hub);
  record(a, "/a");
  await hub.settle();
  a.advance(100);
  await hub.settle();
  assert.equal(a.requests.length, 1);
  assert.deepEqual(asked(a), { "/a": -1 });
  assert.doesNotMatch(a.last().url, /dlp=t/);
  a.last().respondJSON([status({ "/a": 12 })]);
  assert.equal(a.MB.callbacks[0].last_id, 12);
});

test("the leader's own 'from now' on a channel another tab has a position on is resolved by a short poll", async () => {
  const { hub, a, b } = await leaderAndFollower(); // b wants /b from 5
  a.advance(100);
  await hub.settle();
  record(a, "/b"); // the leader, from now
  await hub.settle();
  const resolve = a.requests.find((r) => /dlp=t/.test(r.url));
  assert.ok(resolve, "a short poll");
  assert.deepEqual(resolve.form.filter(([k]) => k !== "__seq"), [["/b", "-1"]]);
  resolve.respondJSON([status({ "/b": 30 })]);
  await hub.settle();
  assert.deepEqual([...a.MB.callbacks].map((c) => c.last_id), [0, 30]);
  assert.equal(b.requests.length, 0);
});
