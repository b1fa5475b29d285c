/*
 * message-bus.js — browser client for the message_bus gem.
 *
 * Speaks the message_bus HTTP protocol: polling, long polling and long polling
 * with streamed (chunked) responses, and, where the server and the browser
 * allow it, one WebSocket per page (`enableWebSocket`, default true), falling
 * back to long polling when it cannot open. No dependencies. Requests go
 * through `MessageBus.ajax` (jQuery.ajax when jQuery is present, or the small
 * adapter in message-bus-ajax.js, which must be loaded after this file).
 *
 * Loading: UMD. With an AMD loader it defines an anonymous module; with
 * CommonJS it sets `module.exports`; in every case it also sets the global
 * `MessageBus` (message-bus-ajax.js and existing pages rely on the global).
 * There is no `noConflict()`: it does not exist in the 4.5 client either.
 */
(function (root, factory) {
  "use strict";
  var bus = factory(root);
  if (root) {
    root.MessageBus = bus;
  }
  if (typeof define === "function" && define.amd) {
    define([], function () {
      return bus;
    });
  } else if (typeof module === "object" && module && module.exports) {
    module.exports = bus;
  }
})(
  typeof globalThis !== "undefined"
    ? globalThis
    : typeof self !== "undefined"
    ? self
    : typeof window !== "undefined"
    ? window
    : this,
  function (global) {
    "use strict";

    var SEPARATOR = "\r\n|\r\n";
    var ESCAPED_SEPARATOR = /\r\n\|\|\r\n/g;
    var NON_STREAMED_CONTENT_TYPE = "application/json; charset=utf-8";
    var STATUS_CHANNEL = "/__status";
    // The storage's epoch: an HTTP response header, and on a WebSocket an
    // entry {"channel": "/__epoch", "data": <epoch>} opening the first frame
    // (and any frame after the storage was replaced).
    var EPOCH_HEADER = "X-MessageBus-Epoch";
    var EPOCH_CHANNEL = "/__epoch";
    // A WebSocket that has not opened by then is given up for long polling.
    var WEBSOCKET_OPEN_TIMEOUT = 5000;
    var LAST_AJAX_KEY = "__mbLastAjax";

    var doc = global.document;
    var con = global.console;

    function log() {
      if (con && con.log) {
        con.log.apply(con, arguments);
      }
    }

    function now() {
      return Date.now();
    }

    // ---- identity ------------------------------------------------------

    // 32 lowercase hex digits in the layout of a version 4 UUID without dashes:
    // the 13th digit is "4", the 17th one of 8 9 a b.
    function generateClientId() {
      var bytes = [];
      var i;
      var cryptoObj = global.crypto;
      if (cryptoObj && typeof cryptoObj.getRandomValues === "function") {
        var arr = new Uint8Array(16);
        cryptoObj.getRandomValues(arr);
        for (i = 0; i < 16; i++) bytes.push(arr[i]);
      } else {
        for (i = 0; i < 16; i++) bytes.push(Math.floor(Math.random() * 256));
      }
      bytes[6] = (bytes[6] & 0x0f) | 0x40;
      bytes[8] = (bytes[8] & 0x3f) | 0x80;
      var out = "";
      for (i = 0; i < 16; i++) {
        out += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
      }
      return out;
    }

    // ---- environment probes (done once, at load) -------------------------

    var storage = null;
    try {
      var ls = global.localStorage;
      if (ls) {
        ls.setItem("mbTestLocalStorage", String(now()));
        ls.removeItem("mbTestLocalStorage");
        storage = ls;
      }
    } catch (e) {
      storage = null;
    }

    var xhrSupportsProgress = false;
    try {
      if (typeof global.XMLHttpRequest === "function") {
        xhrSupportsProgress = "onprogress" in new global.XMLHttpRequest();
      }
    } catch (e) {
      xhrSupportsProgress = false;
    }

    // Page Visibility API, with vendor prefixes; without it, fall back to
    // document.hasFocus() (called, not merely referenced); with no document at
    // all (e.g. a worker) the page counts as visible.
    function isHidden() {
      if (!doc) return false;
      var props = ["hidden", "webkitHidden", "mozHidden", "msHidden"];
      for (var i = 0; i < props.length; i++) {
        if (typeof doc[props[i]] === "boolean") return doc[props[i]];
      }
      if (typeof doc.hasFocus === "function") {
        try {
          return !doc.hasFocus();
        } catch (e) {
          return false;
        }
      }
      return false;
    }

    function readLastAjax() {
      if (!storage) return null;
      try {
        var v = parseInt(storage.getItem(LAST_AJAX_KEY), 10);
        return isNaN(v) ? null : v;
      } catch (e) {
        return null;
      }
    }

    function writeLastAjax(t) {
      if (!storage) return;
      try {
        storage.setItem(LAST_AJAX_KEY, String(t));
      } catch (e) {
        /* quota or privacy mode: ignore */
      }
    }

    // ---- state -----------------------------------------------------------

    var jq = global.jQuery;
    var started = false;
    var stopped = false;
    var paused = false;
    var pausedQueue = [];
    var failCount = 0;
    var totalAjaxFailures = 0;
    var totalAjaxCalls = 0;
    var lastAjaxStartedAt = null;
    var malformedChunks = 0;
    var callbackErrors = 0;
    var chunkedBackoff = 0;
    var pollTimer = null; // the next scheduled poll
    var hiddenWaitTimer = null; // the 500–1000 ms "retry soon" poll
    var socket = null; // the page's WebSocket while it is connecting or open
    var socketOpen = false;
    var socketEverOpened = false; // on this page: the server speaks WebSocket
    var webSocketBackoff = 0; // requests to make by long polling before trying again
    var webSocketDrops = 0; // consecutive drops or failed opens
    var webSocketOpens = 0;
    var lastTransport = null;
    var epoch = null; // of the storage the positions refer to
    var resets = 0;

    var generatedClientId = generateClientId();

    var me = {
      enableLongPolling: true,
      enableChunkedEncoding: true,
      enableWebSocket: true,
      retryWebSocketAfterRequests: 30,
      shareConnection: true,
      callbackInterval: 15000,
      backgroundCallbackInterval: 60000,
      minPollInterval: 100,
      maxPollInterval: 3 * 60 * 1000,
      minHiddenPollInterval: 1500,
      alwaysLongPoll: false,
      shouldLongPollCallback: undefined,
      onReset: undefined,
      firstChunkTimeout: 3000,
      retryChunkedAfterRequests: 30,
      baseUrl: "/",
      headers: {},
      ajax: (jq && jq.ajax) || false,
      clientId: generatedClientId,
      callbacks: [],
      longPoll: null,
      onVisibilityChange: null
    };

    function shouldLongPoll() {
      var visible;
      if (typeof me.shouldLongPollCallback === "function") {
        visible = !!me.shouldLongPollCallback();
      } else {
        visible = !isHidden();
      }
      // A leader long-polls for every tab of its group: any visible one counts.
      if (!visible && share && share.role === "leader") visible = anyTabVisible();
      return !!((me.alwaysLongPoll || visible) && me.enableLongPolling);
    }

    function hiddenTabShouldWait() {
      if (!storage || !isHidden()) return false;
      var last = readLastAjax();
      if (last === null) return false;
      var delta = now() - last;
      return delta >= 0 && delta < me.minHiddenPollInterval;
    }

    function clearTimers() {
      if (pollTimer) {
        clearTimeout(pollTimer);
        pollTimer = null;
      }
      if (hiddenWaitTimer) {
        clearTimeout(hiddenWaitTimer);
        hiddenWaitTimer = null;
      }
    }

    function schedulePoll(delay) {
      if (pollTimer) clearTimeout(pollTimer);
      pollTimer = setTimeout(function () {
        pollTimer = null;
        poll();
      }, delay);
    }

    // ---- message handling -------------------------------------------------

    // `statuses`: whether /__status entries may move positions (a shared
    // batch answering a request made before this tab's positions reached the
    // leader must not). When tabs share a connection, messages a callback
    // already has (by id) are skipped: the leader may fetch from the lowest
    // position of all tabs.
    function deliver(message, statuses) {
      var callbacks = me.callbacks.slice();
      var isStatus = message.channel === STATUS_CHANNEL;
      for (var i = 0; i < callbacks.length; i++) {
        var cb = callbacks[i];
        // a callback removed by an earlier callback for this message is skipped
        if (me.callbacks.indexOf(cb) < 0) continue;
        if (cb.channel === message.channel) {
          if (share && (cb.last_id < 0 || message.message_id <= cb.last_id)) continue;
          cb.last_id = message.message_id;
          try {
            cb.func(message.data, message.global_id, message.message_id);
          } catch (e) {
            callbackErrors++;
            log(
              "MessageBus: error in callback for " + cb.channel + ": " +
                (e && e.message ? e.message : e),
              e
            );
          }
        }
        if (isStatus && statuses && statusFor(message, cb.channel) !== undefined) {
          cb.last_id = statusFor(message, cb.channel);
        }
      }
    }

    function statusFor(message, channel) {
      var data = message.data;
      if (data && typeof data === "object" && Object.prototype.hasOwnProperty.call(data, channel)) {
        return data[channel];
      }
      return undefined;
    }

    // While paused, messages are queued; the ids they carry are recorded
    // right away so that the requests that keep running do not fetch the same
    // messages again (they are delivered once, in order, by resume()).
    function noteIds(message, statuses) {
      for (var i = 0; i < me.callbacks.length; i++) {
        var cb = me.callbacks[i];
        if (cb.channel === message.channel) {
          if (!share || cb.last_id < message.message_id) cb.last_id = message.message_id;
        } else if (message.channel === STATUS_CHANNEL && statuses && statusFor(message, cb.channel) !== undefined) {
          cb.last_id = statusFor(message, cb.channel);
        }
      }
    }

    function applyMessages(messages, statuses) {
      for (var i = 0; i < messages.length; i++) {
        var m = messages[i];
        if (!m || typeof m !== "object") continue;
        if (paused) {
          rememberIdsBeforePause();
          pausedQueue.push({ message: m, statuses: statuses });
          noteIds(m, statuses);
        } else {
          deliver(m, statuses);
        }
      }
    }

    // Each callback's id before the first queued message: resume() puts them
    // back, then delivers the queue, so that skipping what a callback already
    // has (shared connections) lets the queued messages through.
    var idsBeforePause = null;
    function rememberIdsBeforePause() {
      if (idsBeforePause) return;
      idsBeforePause = [];
      for (var i = 0; i < me.callbacks.length; i++) {
        idsBeforePause.push([me.callbacks[i], me.callbacks[i].last_id]);
      }
    }

    // ---- the storage's epoch ------------------------------------------------
    //
    // A backlog that was reset (Redis flushed or restarted empty, a
    // PostgreSQL table recreated) starts its ids again at 1: positions of the
    // old one mean nothing there. A new epoch in a response means exactly
    // that: the response is dropped, every subscription starts again from the
    // new storage's first retained message (last id 0), and onReset(channel)
    // tells the app, once per channel, to refetch what it shows.
    // Returns whether the storage was replaced.
    function noteEpoch(value) {
      if (typeof value !== "string" || value === "") return false;
      if (epoch === null || epoch === value) {
        epoch = value;
        return false;
      }
      epoch = value;
      resetPositions();
      if (share && share.role === "leader") post({ type: "reset", epoch: value });
      return true;
    }

    function resetPositions() {
      resets++;
      var channels = [];
      for (var i = 0; i < me.callbacks.length; i++) {
        var cb = me.callbacks[i];
        if (cb.last_id >= 0) cb.last_id = 0;
        if (channels.indexOf(cb.channel) < 0) channels.push(cb.channel);
      }
      pausedQueue = [];
      idsBeforePause = null;
      for (var j = 0; j < channels.length; j++) {
        if (typeof me.onReset === "function") {
          try {
            me.onReset(channels[j]);
          } catch (e) {
            callbackErrors++;
            log("MessageBus: error in onReset for " + channels[j], e);
          }
        }
      }
      if (share && share.role === "leader") {
        share.asked = {};
        share.gen++;
      } else if (share) {
        sendState(true);
      }
    }

    function epochOf(xhr) {
      if (!xhr || typeof xhr.getResponseHeader !== "function") return null;
      try {
        return xhr.getResponseHeader(EPOCH_HEADER);
      } catch (e) {
        return null;
      }
    }

    // Messages from the server (this tab's own request or socket).
    function processMessages(messages) {
      failCount = 0;
      if (!messages || !messages.length) return false;
      if (share && share.role === "leader") shareBatch(messages);
      applyMessages(messages, true);
      if (share) shareStateChanged();
      return true;
    }

    function parsePiece(text) {
      if (/^\s*$/.test(text)) return;
      var parsed;
      try {
        parsed = JSON.parse(text.replace(ESCAPED_SEPARATOR, SEPARATOR));
      } catch (e) {
        malformedChunks++;
        log("MessageBus: failed to parse streamed chunk, skipped: " + text, e);
        return;
      }
      if (Object.prototype.toString.call(parsed) !== "[object Array]") {
        malformedChunks++;
        log("MessageBus: streamed chunk is not an array, skipped: " + text);
        return;
      }
      processMessages(parsed);
    }

    // ---- the request cycle -------------------------------------------------

    function requestHeaders(chunked) {
      var headers = { "X-SILENCE-LOGGER": "true" };
      var extra = me.headers || {};
      for (var name in extra) {
        if (Object.prototype.hasOwnProperty.call(extra, name)) {
          headers[name] = extra[name];
        }
      }
      if (!chunked) headers["Dont-Chunk"] = "true";
      return headers;
    }

    function startRequest(data) {
      var ajax = me.ajax || (global.jQuery && global.jQuery.ajax);
      if (typeof ajax !== "function") {
        throw new Error("Either jQuery or the ajax adapter must be loaded");
      }

      data.__seq = nextSeq();
      var requestStartedAt = now();
      lastAjaxStartedAt = requestStartedAt;

      var longPoll = shouldLongPoll();
      var chunked = longPoll && me.enableChunkedEncoding && xhrSupportsProgress;
      if (chunkedBackoff > 0) {
        chunkedBackoff--;
        chunked = false;
      }
      lastTransport = chunked ? "streaming" : longPoll ? "long-polling" : "polling";

      var headers = requestHeaders(chunked);
      writeLastAjax(requestStartedAt);

      var streaming = chunked; // may be switched off by the first progress event
      var sawProgress = false;
      var position = 0;
      var gotData = false;
      var aborted = false;
      var rateLimitedFor = 0; // seconds
      var firstChunkTimer = null;
      var finished = false;
      var request = null;

      function clearFirstChunkTimer() {
        if (firstChunkTimer) {
          clearTimeout(firstChunkTimer);
          firstChunkTimer = null;
        }
      }

      function consume(text) {
        if (typeof text !== "string") return;
        for (;;) {
          var idx = text.indexOf(SEPARATOR, position);
          if (idx < 0) return;
          var piece = text.substring(position, idx);
          position = idx + SEPARATOR.length;
          parsePiece(piece);
        }
      }

      function onProgress(xhr) {
        clearFirstChunkTimer();
        if (!streaming || finished) return;
        if (!sawProgress && noteEpoch(epochOf(xhr))) {
          // The storage was replaced: start again from its first message.
          finished = true;
          aborted = true;
          if (request && typeof request.abort === "function") request.abort();
          return;
        }
        sawProgress = true;
        var type = null;
        try {
          type = xhr.getResponseHeader("Content-Type");
        } catch (e) {
          type = null;
        }
        if (type === NON_STREAMED_CONTENT_TYPE) {
          streaming = false;
          return;
        }
        consume(xhr.responseText);
      }

      function makeXhr() {
        var $ = global.jQuery;
        var x =
          $ && $.ajaxSettings && $.ajaxSettings.xhr
            ? $.ajaxSettings.xhr()
            : new (me.xhrImplementation || global.XMLHttpRequest)();
        if (chunked) {
          x.onprogress = function () {
            onProgress(x);
          };
        }
        return x;
      }

      var url =
        me.baseUrl + "message-bus/" + me.clientId + "/poll" + (longPoll ? "" : "?dlp=t");

      request = ajax({
        url: url,
        data: data,
        async: true,
        dataType: chunked ? "text" : "json",
        type: "POST",
        headers: headers,
        messageBus: { chunked: chunked, onProgressListener: onProgress },
        xhr: makeXhr,
        success: function (body, textStatus, xhr) {
          if (!stopped && !sawProgress && noteEpoch(epochOf(xhr))) {
            gotData = true; // ask again at once, from the new storage's start
            return;
          }
          if (!stopped && chunked && streaming) {
            if (!sawProgress && typeof body === "string" && body.indexOf(SEPARATOR) < 0) {
              // No progress event ever arrived and the body is not framed:
              // it is a plain JSON answer.
              streaming = false;
            } else {
              // Pick up any complete records not yet seen by a progress event.
              consume(body);
              return;
            }
          }
          if (stopped) return;
          var messages = body;
          if (typeof messages === "string") {
            try {
              messages = messages === "" ? [] : JSON.parse(messages);
            } catch (e) {
              malformedChunks++;
              log("MessageBus: failed to parse response, ignored", e);
              return;
            }
          }
          gotData = processMessages(messages);
        },
        error: function (xhr, textStatus) {
          clearFirstChunkTimer();
          if (xhr && xhr.status === 429) {
            var header = null;
            try {
              header = xhr.getResponseHeader("Retry-After");
            } catch (e) {
              header = null;
            }
            rateLimitedFor = Math.max(15, parseInt(header, 10) || 0);
          } else if (textStatus === "abort") {
            aborted = true;
          } else {
            failCount++;
            totalAjaxFailures++;
          }
        },
        complete: function () {
          finished = true;
          clearFirstChunkTimer();
          if (me.longPoll === request) me.longPoll = null;
          if (!started) return;

          var delay;
          if (rateLimitedFor) {
            delay = Math.max(me.minPollInterval, rateLimitedFor * 1000);
          } else if (aborted) {
            delay = me.minPollInterval;
          } else if (failCount > 2) {
            delay = Math.min(me.callbackInterval * failCount, me.maxPollInterval);
          } else if (shouldLongPoll() && gotData) {
            delay = me.minPollInterval;
          } else {
            var spacing = shouldLongPoll() ? me.callbackInterval : me.backgroundCallbackInterval;
            delay = Math.max(100, spacing - (now() - requestStartedAt));
          }
          schedulePoll(delay);
        }
      });

      if (chunked && !finished) {
        firstChunkTimer = setTimeout(function () {
          firstChunkTimer = null;
          if (finished) return;
          chunkedBackoff = me.retryChunkedAfterRequests;
          if (request && typeof request.abort === "function") request.abort();
        }, me.firstChunkTimeout);
      }

      if (!finished) me.longPoll = request;
      return request;
    }

    // ---- one connection per browser ------------------------------------------
    //
    // Tabs of one origin with the same baseUrl and headers form a group: the
    // Web Locks API elects the leader (the tab holding the group's lock; the
    // browser hands it to a waiting tab when the leader closes, navigates or
    // crashes), a BroadcastChannel carries the traffic. Only the leader talks
    // to the server, for the union of every tab's subscriptions, each channel
    // from the lowest position any tab has; it forwards what it receives to
    // all tabs and every tab delivers what its own callbacks have not seen.
    // The tabs of a group share one client id (the server sees one client)
    // and one __seq counter, both kept in localStorage.
    //
    // Messages between tabs: {type, tab, ...}
    //   hello     a tab joined; the leader answers with `leader`
    //   leader    a tab became leader; the others send their `state`
    //   state     a tab's concrete positions ({channel: id}), visibility and
    //             registration number; sent on every change and every 15 s
    //   ack       the leader registered state `reg` of tab `to`; batches of
    //             generation >= `gen` answer requests that include it
    //   batch     messages from the server, with the leader's generation
    //   bye       a tab left
    // A callback at -1 ("from now") is first resolved by a short poll of its
    // own tab: a shared request cannot ask "now" for one tab without moving
    // the others.

    var SHARE_HEARTBEAT = 15000;
    var SHARE_EXPIRY = 180000; // a tab not heard from for this long is gone
    var share = null;
    var tabId = generateClientId();

    function sharingAvailable() {
      var nav = global.navigator;
      return (
        me.shareConnection &&
        typeof global.BroadcastChannel === "function" &&
        nav &&
        nav.locks &&
        typeof nav.locks.request === "function"
      );
    }

    function groupKey() {
      var names = [];
      var extra = me.headers || {};
      for (var name in extra) {
        if (Object.prototype.hasOwnProperty.call(extra, name)) names.push(name);
      }
      names.sort();
      var headers = [];
      for (var i = 0; i < names.length; i++) headers.push([names[i], String(extra[names[i]])]);
      var loc = global.location;
      var base = /^[a-z]+:\/\//i.test(me.baseUrl) || !loc ? me.baseUrl : (loc.protocol || "") + "//" + (loc.host || "") + me.baseUrl;
      var key = "message-bus:" + base + "|" + JSON.stringify(headers);
      // An app that chose its own client id shares only with tabs that chose the same.
      if (me.clientId !== generatedClientId) key += "|" + me.clientId;
      return key;
    }

    function storedValue(name, make) {
      if (!storage) return make();
      try {
        var v = storage.getItem(name);
        if (v === null) {
          v = make();
          storage.setItem(name, v);
        }
        return v;
      } catch (e) {
        return make();
      }
    }

    function joinGroup() {
      var key = groupKey();
      share = {
        key: key,
        role: "pending", // until the lock is ours or a leader answers
        leader: null,
        channel: new global.BroadcastChannel(key),
        release: null,
        // leader: every tab's state, generation of the current request or
        // socket, and the positions it asked the server for
        tabs: {},
        gen: 1,
        asked: {},
        // every tab: its last registration, the generation acked for it
        reg: 0,
        ackedGen: Infinity,
        sentState: null,
        heartbeat: null,
        resolving: false
      };
      me.clientId = storedValue("__mbClientId:" + key, generateClientId);
      generatedClientId = me.clientId; // ours, not the app's: the same group when rejoining
      share.channel.onmessage = function (event) {
        onGroupMessage(event && event.data);
      };
      var group = share;
      global.navigator.locks.request(key, function () {
        if (share !== group) return null; // left before the lock came
        becomeLeader();
        return new Promise(function (resolve) {
          group.release = resolve;
        });
      });
      (function beat() {
        group.heartbeat = setTimeout(function () {
          if (share !== group) return;
          sendState(true);
          if (group.role === "leader") expireTabs();
          beat();
        }, SHARE_HEARTBEAT);
      })();
      post({ type: "hello" });
      resolveFromNow();
    }

    function leaveGroup() {
      if (!share) return;
      var group = share;
      share = null;
      clearTimeout(group.heartbeat);
      try {
        group.channel.postMessage({ type: "bye", tab: tabId });
        group.channel.close();
      } catch (e) {
        /* closed already */
      }
      if (group.release) group.release();
    }

    function post(message) {
      if (!share) return;
      message.tab = tabId;
      try {
        share.channel.postMessage(message);
      } catch (e) {
        log("MessageBus: cannot post to the other tabs", e);
      }
    }

    function becomeLeader() {
      share.role = "leader";
      share.leader = tabId;
      share.tabs = {};
      share.gen = 1;
      share.asked = {};
      share.ackedGen = 0;
      post({ type: "leader" });
      // The other tabs answer with their states at once; asking the server a
      // moment later spares a restart for each of them.
      if (started && !stopped) schedulePoll(me.minPollInterval);
    }

    function onGroupMessage(message) {
      if (!share || !message || typeof message !== "object" || message.tab === tabId) return;
      var leading = share.role === "leader";
      switch (message.type) {
        case "hello":
          if (leading) post({ type: "leader" });
          break;
        case "leader":
          if (leading) return; // a stale announcement
          share.role = "follower";
          share.leader = message.tab;
          share.ackedGen = Infinity;
          sendState(true);
          resolveFromNow();
          break;
        case "state":
          if (leading) registerTab(message);
          break;
        case "bye":
          if (leading) delete share.tabs[message.tab];
          break;
        case "reset":
          if (!leading && message.tab === share.leader && message.epoch !== epoch) {
            epoch = message.epoch;
            resetPositions();
          }
          break;
        case "ack":
          if (!leading && message.to === tabId && message.reg === share.reg && message.from === share.leader) {
            share.ackedGen = message.gen;
          }
          break;
        case "batch":
          if (!leading && message.tab === share.leader && message.messages && message.messages.length) {
            applyMessages(message.messages, message.gen >= share.ackedGen);
            sendState(false);
          }
          break;
        default:
          break;
      }
    }

    // This tab's positions the group may use: -1 ("from now") is not a position.
    function concretePositions() {
      var map = {};
      for (var i = 0; i < me.callbacks.length; i++) {
        var cb = me.callbacks[i];
        if (cb.last_id < 0) continue;
        if (!Object.prototype.hasOwnProperty.call(map, cb.channel) || cb.last_id < map[cb.channel]) {
          map[cb.channel] = cb.last_id;
        }
      }
      return map;
    }

    // Tells the leader where this tab is (when something changed, or always).
    function sendState(always) {
      if (!share || share.role === "leader") return;
      var state = JSON.stringify([concretePositions(), !isHidden()]);
      if (!always && state === share.sentState) return;
      share.sentState = state;
      share.reg++;
      share.ackedGen = Infinity; // statuses wait for the leader's ack
      post({ type: "state", positions: concretePositions(), visible: !isHidden(), reg: share.reg });
    }

    function shareStateChanged() {
      if (!share) return;
      if (share.role === "leader") {
        adjustRequest();
      } else {
        sendState(false);
      }
      resolveFromNow();
    }

    // Leader: a tab's state. Asks the server again when a channel is new or
    // wanted from lower than it asked; acks with the generation that covers it.
    function registerTab(message) {
      var positions = message.positions && typeof message.positions === "object" ? message.positions : {};
      share.tabs[message.tab] = { positions: positions, visible: !!message.visible, seen: now() };
      adjustRequest();
      post({ type: "ack", to: message.tab, reg: message.reg, gen: share.gen, from: tabId });
      resolveFromNow(); // own "from now" callbacks on a channel the tab has a position on
      if (started && !stopped && !me.longPoll && !socket && !pollTimer) poll();
    }

    function expireTabs() {
      var limit = now() - SHARE_EXPIRY;
      for (var tab in share.tabs) {
        if (Object.prototype.hasOwnProperty.call(share.tabs, tab) && share.tabs[tab].seen < limit) {
          delete share.tabs[tab];
        }
      }
    }

    // Leader: for every channel any tab wants, the lowest position; -1 for a
    // channel only the leader's own callbacks want "from now" (the server's
    // status then resolves them, as for a tab of its own).
    function groupPositions() {
      var map = concretePositions();
      for (var tab in share.tabs) {
        if (!Object.prototype.hasOwnProperty.call(share.tabs, tab)) continue;
        var positions = share.tabs[tab].positions;
        for (var channel in positions) {
          if (!Object.prototype.hasOwnProperty.call(positions, channel)) continue;
          var id = positions[channel];
          if (typeof id !== "number" || id < 0) continue;
          if (!Object.prototype.hasOwnProperty.call(map, channel) || id < map[channel]) map[channel] = id;
        }
      }
      for (var i = 0; i < me.callbacks.length; i++) {
        var cb = me.callbacks[i];
        if (cb.last_id < 0 && !Object.prototype.hasOwnProperty.call(map, cb.channel)) map[cb.channel] = -1;
      }
      return map;
    }

    // Leader: the concrete positions of every tab, its own included, and the
    // channels its request already covers from a position.
    function othersPositions() {
      var map = {};
      var wanted = groupPositions();
      for (var channel in wanted) {
        if (Object.prototype.hasOwnProperty.call(wanted, channel) && wanted[channel] >= 0) map[channel] = wanted[channel];
      }
      for (var asked in share.asked) {
        if (Object.prototype.hasOwnProperty.call(share.asked, asked) && share.asked[asked] >= 0) map[asked] = share.asked[asked];
      }
      return map;
    }

    function anyTabVisible() {
      for (var tab in share.tabs) {
        if (Object.prototype.hasOwnProperty.call(share.tabs, tab) && share.tabs[tab].visible) return true;
      }
      return false;
    }

    // Leader: the request or socket in use must cover every tab's positions.
    // A new channel goes on the open socket as a subscribe; anything else (a
    // lower position, or a long poll) restarts it under a new generation, so
    // that no status of the old one reaches a tab it does not cover.
    function adjustRequest() {
      var wanted = groupPositions();
      var restart = false;
      var added = {};
      var anyAdded = false;
      var gone = [];
      for (var channel in wanted) {
        if (!Object.prototype.hasOwnProperty.call(wanted, channel)) continue;
        if (!Object.prototype.hasOwnProperty.call(share.asked, channel)) {
          added[channel] = wanted[channel];
          anyAdded = true;
        } else if (wanted[channel] < share.asked[channel] || (share.asked[channel] < 0 && wanted[channel] >= 0)) {
          // Lower than where it got to, or a position where it asked "from now".
          restart = true;
        }
      }
      for (var asked in share.asked) {
        if (Object.prototype.hasOwnProperty.call(share.asked, asked) && !Object.prototype.hasOwnProperty.call(wanted, asked)) {
          gone.push(asked);
        }
      }
      if (socket && !socketOpen) return; // it subscribes to everything wanted once open
      if (socket && !restart) {
        if (anyAdded && sendOnSocket({ subscribe: added })) {
          for (var a in added) if (Object.prototype.hasOwnProperty.call(added, a)) share.asked[a] = added[a];
        }
        if (gone.length && sendOnSocket({ unsubscribe: gone })) {
          for (var g = 0; g < gone.length; g++) delete share.asked[gone[g]];
        }
        return;
      }
      if (restart || anyAdded) {
        share.gen++;
        if (socket) {
          closeSocket(1000, "resubscribing");
          share.asked = {};
          schedulePoll(0);
        } else {
          abortInFlight();
        }
      }
    }

    // Leader: forwards the server's messages, and notes where its request
    // or socket has got to on each channel.
    function shareBatch(messages) {
      post({ type: "batch", gen: share.gen, messages: messages });
      var asked = share.asked;
      for (var i = 0; i < messages.length; i++) {
        var m = messages[i];
        if (!m || typeof m !== "object") continue;
        if (m.channel === STATUS_CHANNEL && m.data && typeof m.data === "object") {
          for (var channel in m.data) {
            if (Object.prototype.hasOwnProperty.call(m.data, channel) && Object.prototype.hasOwnProperty.call(asked, channel)) {
              asked[channel] = m.data[channel];
            }
          }
        } else if (Object.prototype.hasOwnProperty.call(asked, m.channel) && m.message_id > asked[m.channel]) {
          asked[m.channel] = m.message_id;
        }
      }
    }

    // What a request or a socket asks the server for.
    function requestPositions() {
      if (!share) return positions();
      var wanted = groupPositions();
      share.asked = {};
      for (var channel in wanted) {
        if (Object.prototype.hasOwnProperty.call(wanted, channel)) share.asked[channel] = wanted[channel];
      }
      return wanted;
    }

    // Resolves this tab's -1 callbacks with a short poll (the server answers
    // a /__status with each channel's current id), but for those the leader
    // may ask "from now" itself: channels no tab has a position on.
    function resolveFromNow() {
      if (!share || share.resolving || stopped || share.role === "pending") return;
      var data = {};
      var any = false;
      var others = share.role === "leader" ? othersPositions() : null;
      for (var i = 0; i < me.callbacks.length; i++) {
        var cb = me.callbacks[i];
        if (cb.last_id >= 0) continue;
        if (others && !Object.prototype.hasOwnProperty.call(others, cb.channel)) continue;
        data[cb.channel] = -1;
        any = true;
      }
      if (!any) return;
      var ajax = me.ajax || (global.jQuery && global.jQuery.ajax);
      if (typeof ajax !== "function") return;
      share.resolving = true;
      var group = share;
      data.__seq = nextSeq();
      ajax({
        url: me.baseUrl + "message-bus/" + me.clientId + "/poll?dlp=t",
        data: data,
        async: true,
        dataType: "json",
        type: "POST",
        headers: requestHeaders(false),
        messageBus: { chunked: false, onProgressListener: function () {} },
        success: function (messages, textStatus, xhr) {
          if (share !== group) return;
          if (noteEpoch(epochOf(xhr))) return; // its positions are reset: resolved again
          if (typeof messages === "string") {
            try {
              messages = JSON.parse(messages);
            } catch (e) {
              messages = [];
            }
          }
          if (messages && messages.length) applyMessages(messages, true);
        },
        error: function () {
          failCount++;
        },
        complete: function () {
          if (share !== group) return;
          group.resolving = false;
          shareStateChanged();
          // Still unresolved (a failure): again, backing off.
          var pending = false;
          for (var i = 0; i < me.callbacks.length; i++) {
            if (me.callbacks[i].last_id < 0 && Object.prototype.hasOwnProperty.call(data, me.callbacks[i].channel)) pending = true;
          }
          if (pending) {
            setTimeout(resolveFromNow, Math.min(me.maxPollInterval, me.minPollInterval * Math.pow(2, Math.min(failCount, 12))));
          }
        }
      });
    }

    // The __seq of a request: shared by the tabs of a group, so that a new
    // leader's requests are newer than the last one's.
    function nextSeq() {
      totalAjaxCalls++;
      if (!share || !storage) return totalAjaxCalls;
      var name = "__mbSeq:" + share.key;
      try {
        var seq = Math.max(totalAjaxCalls, (parseInt(storage.getItem(name), 10) || 0) + 1);
        storage.setItem(name, String(seq));
        return seq;
      } catch (e) {
        return totalAjaxCalls;
      }
    }

    // ---- the WebSocket transport -------------------------------------------
    //
    // GET <baseUrl>message-bus/<clientId>/ws, upgraded. The page sends
    // {"subscribe": {channel: last_id, ...}} (on open, and for every later
    // subscribe) and {"unsubscribe": [channel, ...]}; the server sends text
    // frames, each a JSON array of messages exactly as a poll answers them.
    // Browsers cannot send custom headers with a WebSocket, so pages that set
    // `MessageBus.headers` (their server may identify users by them) poll.

    function hasCustomHeaders() {
      var extra = me.headers || {};
      for (var name in extra) {
        if (Object.prototype.hasOwnProperty.call(extra, name)) return true;
      }
      return false;
    }

    function webSocketUrl() {
      var path = me.baseUrl + "message-bus/" + encodeURIComponent(me.clientId) + "/ws";
      var loc = global.location;
      if (/^wss?:\/\//i.test(path)) return path;
      if (/^https?:\/\//i.test(path)) return path.replace(/^http/i, "ws");
      if (!loc || !loc.host) return null;
      var scheme = loc.protocol === "https:" ? "wss://" : "ws://";
      if (path.indexOf("//") === 0) return scheme + path.substring(2);
      if (path.charAt(0) !== "/") {
        var dir = (loc.pathname || "/").replace(/[^/]*$/, "");
        path = dir + path;
      }
      return scheme + loc.host + path;
    }

    function webSocketWanted() {
      return (
        me.enableWebSocket &&
        me.enableLongPolling &&
        typeof global.WebSocket === "function" &&
        webSocketBackoff === 0 &&
        !hasCustomHeaders() &&
        shouldLongPoll() &&
        webSocketUrl() !== null
      );
    }

    function positions() {
      var map = {};
      for (var i = 0; i < me.callbacks.length; i++) {
        map[me.callbacks[i].channel] = me.callbacks[i].last_id;
      }
      return map;
    }

    function sendOnSocket(payload) {
      if (!socket || !socketOpen) return false;
      try {
        socket.send(JSON.stringify(payload));
        return true;
      } catch (e) {
        return false;
      }
    }

    function closeSocket(code, reason) {
      var s = socket;
      socket = null;
      socketOpen = false;
      if (s) {
        try {
          s.close(code, reason);
        } catch (e) {
          /* already closing */
        }
      }
    }

    function onSocketFrame(data) {
      if (typeof data !== "string") return; // the protocol has only text frames
      var parsed;
      try {
        parsed = JSON.parse(data);
      } catch (e) {
        malformedChunks++;
        log("MessageBus: failed to parse WebSocket frame, skipped: " + data, e);
        return;
      }
      if (Object.prototype.toString.call(parsed) !== "[object Array]") {
        malformedChunks++;
        log("MessageBus: WebSocket frame is not an array, skipped: " + data);
        return;
      }
      var first = parsed[0];
      if (first && first.channel === EPOCH_CHANNEL) {
        if (noteEpoch(first.data)) {
          // Start again from the new storage's first message, on a fresh
          // socket: this one may still carry answers to positions of the old
          // storage (sent before this frame arrived), which would move the
          // positions past what the new storage holds.
          closeSocket(1000, "storage reset");
          poll();
          return;
        }
        parsed = parsed.slice(1);
      }
      processMessages(parsed);
    }

    function openWebSocket() {
      var url = webSocketUrl();
      var s;
      try {
        s = new global.WebSocket(url);
      } catch (e) {
        webSocketBackoff = me.retryWebSocketAfterRequests;
        poll();
        return;
      }
      socket = s;
      socketOpen = false;
      lastAjaxStartedAt = now();
      var openTimer = setTimeout(function () {
        openTimer = null;
        if (socket === s && !socketOpen) {
          log("MessageBus: WebSocket did not open in time, long polling instead");
          closeSocket();
          giveUp();
        }
      }, WEBSOCKET_OPEN_TIMEOUT);

      // It never opened: long poll instead. A server that spoke WebSocket on
      // this page before is probably restarting: one long poll (which backs
      // off on failure like any), then try again; otherwise stay on long
      // polling for retryWebSocketAfterRequests requests.
      function giveUp() {
        webSocketDrops++;
        webSocketBackoff = socketEverOpened ? 1 : me.retryWebSocketAfterRequests;
        if (started && !stopped) poll();
      }

      s.onopen = function () {
        if (socket !== s) return;
        if (openTimer) {
          clearTimeout(openTimer);
          openTimer = null;
        }
        socketOpen = true;
        socketEverOpened = true;
        webSocketOpens++;
        lastTransport = "websocket";
        failCount = 0;
        sendOnSocket({ subscribe: requestPositions() });
      };
      s.onmessage = function (event) {
        if (socket !== s) return;
        webSocketDrops = 0;
        onSocketFrame(event && event.data);
      };
      s.onclose = function (event) {
        if (openTimer) {
          clearTimeout(openTimer);
          openTimer = null;
        }
        if (socket !== s) return;
        var wasOpen = socketOpen;
        socket = null;
        socketOpen = false;
        if (!started || stopped) return;
        if (!wasOpen) {
          giveUp();
          return;
        }
        // Dropped (a restart, a slow consumer closed with 1008, a proxy's idle
        // timeout): reconnect with the last ids, backing off (with jitter, so
        // that every page of a restarted server does not come back at once).
        webSocketDrops++;
        if (event && event.code && event.code !== 1000 && event.code !== 1001) {
          log("MessageBus: WebSocket closed (" + event.code + (event.reason ? " " + event.reason : "") + "), reconnecting");
        }
        var base = Math.min(me.maxPollInterval, me.minPollInterval * Math.pow(2, webSocketDrops - 1));
        schedulePoll(base + Math.random() * base);
      };
      s.onerror = function () {
        /* onclose follows */
      };
    }

    function hasChannels() {
      if (!share) return me.callbacks.length > 0;
      var wanted = groupPositions();
      for (var channel in wanted) if (Object.prototype.hasOwnProperty.call(wanted, channel)) return true;
      return false;
    }

    function poll() {
      if (stopped || !started) return;
      if (share && share.role !== "leader") return; // the leader tab holds the connection
      if (socket) return;
      if (!hasChannels() || hiddenTabShouldWait()) {
        if (!hiddenWaitTimer) {
          hiddenWaitTimer = setTimeout(function () {
            hiddenWaitTimer = null;
            poll();
          }, 500 + Math.random() * 500);
        }
        return;
      }
      if (me.longPoll) return;
      if (webSocketWanted()) {
        openWebSocket();
        return;
      }
      if (webSocketBackoff > 0) webSocketBackoff--;
      startRequest(requestPositions());
    }

    function abortInFlight() {
      var req = me.longPoll;
      if (req && typeof req.abort === "function") req.abort();
    }

    // ---- public API ---------------------------------------------------------

    me.start = function () {
      if (started) return;
      started = true;
      stopped = false;
      if (!share && sharingAvailable()) joinGroup();
      if (doc && typeof doc.addEventListener === "function" && !me.onVisibilityChange) {
        me.onVisibilityChange = function () {
          if (share && share.role !== "leader") {
            sendState(false); // the leader long-polls while any tab is visible
            return;
          }
          if (isHidden() || me.longPoll || socket) return;
          if (pollTimer || hiddenWaitTimer) {
            clearTimers();
            poll();
          }
        };
        doc.addEventListener("visibilitychange", me.onVisibilityChange);
      }
      poll();
    };

    me.stop = function () {
      stopped = true;
      started = false;
      clearTimers();
      abortInFlight();
      closeSocket(1000, "stopped");
      leaveGroup();
      me.longPoll = null;
      if (me.onVisibilityChange && doc && typeof doc.removeEventListener === "function") {
        doc.removeEventListener("visibilitychange", me.onVisibilityChange);
      }
      me.onVisibilityChange = null;
    };

    me.pause = function () {
      paused = true;
    };

    me.resume = function () {
      paused = false;
      var queued = pausedQueue;
      pausedQueue = [];
      var before = idsBeforePause || [];
      idsBeforePause = null;
      for (var j = 0; j < before.length; j++) before[j][0].last_id = before[j][1];
      for (var i = 0; i < queued.length; i++) deliver(queued[i].message, queued[i].statuses);
    };

    me.status = function () {
      if (paused) return "paused";
      if (started) return "started";
      if (stopped) return "stopped";
      throw "Cannot determine current status";
    };

    me.subscribe = function (channel, func, lastId) {
      if (typeof channel !== "string") {
        throw "Channel name must be a string!";
      }
      if (lastId === null || lastId === undefined) {
        lastId = -1;
      } else if (typeof lastId !== "number") {
        throw "lastId has type " + typeof lastId + " but a number was expected.";
      }
      me.callbacks.push({ channel: channel, func: func, last_id: lastId });
      if (share) {
        shareStateChanged();
      } else {
        // An open WebSocket takes the new position as it is; a request in
        // flight is restarted so that the next one carries the channel.
        var position = {};
        position[channel] = lastId;
        sendOnSocket({ subscribe: position });
        abortInFlight();
      }
      if (!started && !stopped) me.start();
      return func;
    };

    me.unsubscribe = function (channel, func) {
      var prefix = null;
      if (typeof channel === "string" && channel.charAt(channel.length - 1) === "*") {
        prefix = channel.substring(0, channel.length - 1);
      }
      var kept = [];
      var removed = false;
      for (var i = 0; i < me.callbacks.length; i++) {
        var cb = me.callbacks[i];
        var matches =
          prefix !== null ? cb.channel.indexOf(prefix) === 0 : cb.channel === channel;
        if (matches && func) matches = cb.func === func;
        if (matches) removed = true;
        else kept.push(cb);
      }
      if (removed) {
        var before = positions();
        // mutate in place: `callbacks` is a live array users may hold on to
        me.callbacks.length = 0;
        for (var j = 0; j < kept.length; j++) me.callbacks.push(kept[j]);
        var after = positions();
        var gone = [];
        for (var name in before) {
          if (Object.prototype.hasOwnProperty.call(before, name) && !Object.prototype.hasOwnProperty.call(after, name)) {
            gone.push(name);
          }
        }
        if (share) {
          shareStateChanged();
        } else {
          if (gone.length) sendOnSocket({ unsubscribe: gone });
          abortInFlight();
        }
      }
      return removed;
    };

    me.diagnostics = function () {
      var info = {
        stopped: stopped,
        started: started,
        paused: paused,
        callbacks: me.callbacks.slice(),
        totalAjaxCalls: totalAjaxCalls,
        recentFailures: failCount,
        totalAjaxFailures: totalAjaxFailures,
        malformedChunks: malformedChunks,
        callbackErrors: callbackErrors,
        transport: share && share.role !== "leader" ? "shared" : lastTransport,
        webSocketOpens: webSocketOpens,
        sharing: share ? share.role : "off",
        epoch: epoch,
        resets: resets,
        secondsSinceLastAjax:
          lastAjaxStartedAt === null ? null : (now() - lastAjaxStartedAt) / 1000
      };
      log("Stopped: " + stopped + " Started: " + started);
      log("Current callbacks");
      log(info.callbacks);
      log(
        "Total ajax calls: " + totalAjaxCalls +
          " Recent failure count: " + failCount +
          " Total failures: " + totalAjaxFailures
      );
      log("Malformed chunks: " + malformedChunks);
      log("Transport: " + (lastTransport || "none yet") + " (WebSocket opened " + webSocketOpens + " times)");
      log(
        "Last ajax call: " +
          (info.secondsSinceLastAjax === null ? "never" : info.secondsSinceLastAjax + " seconds ago")
      );
      return info;
    };

    return me;
  }
);
