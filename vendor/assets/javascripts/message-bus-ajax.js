/*
 * message-bus-ajax.js — a minimal XMLHttpRequest transport for message-bus.js,
 * for pages without jQuery. Load it after message-bus.js; it installs
 * `MessageBus.ajax`.
 *
 * Uses `MessageBus.xhrImplementation` (a constructor) instead of the global
 * XMLHttpRequest when it is set.
 *
 * A request aborted through the returned handle reports the text status
 * "abort" to `error`, like jQuery, so client-initiated aborts (subscribe,
 * unsubscribe, first-chunk timeout) are not counted as failures.
 */
(function (global) {
  "use strict";

  var bus = global.MessageBus;
  if (!bus) {
    throw new Error("MessageBus must be loaded before the ajax adapter");
  }

  function encodeForm(data) {
    if (typeof global.URLSearchParams === "function") {
      return new global.URLSearchParams(data).toString();
    }
    var parts = [];
    for (var k in data) {
      if (Object.prototype.hasOwnProperty.call(data, k)) {
        parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(data[k]));
      }
    }
    return parts.join("&");
  }

  bus.ajax = function (options) {
    var Impl = bus.xhrImplementation || global.XMLHttpRequest;
    var xhr = new Impl();
    var abortedByClient = false;
    var done = false;

    function finish() {
      if (done) return;
      done = true;
      var status = xhr.status;
      if (abortedByClient) {
        if (options.error) options.error(xhr, "abort");
      } else if ((status >= 200 && status < 300) || status === 304) {
        // (data, textStatus, xhr), as jQuery.ajax calls it.
        if (options.success) options.success(xhr.responseText, xhr.statusText, xhr);
      } else {
        if (options.error) options.error(xhr, xhr.statusText || "error");
      }
      if (options.complete) options.complete();
    }

    xhr.open("POST", options.url);
    var headers = options.headers || {};
    for (var name in headers) {
      if (Object.prototype.hasOwnProperty.call(headers, name)) {
        xhr.setRequestHeader(name, headers[name]);
      }
    }
    xhr.setRequestHeader("Content-Type", "application/x-www-form-urlencoded");

    var mb = options.messageBus;
    if (mb && mb.chunked && typeof mb.onProgressListener === "function") {
      xhr.onprogress = function () {
        mb.onProgressListener(xhr);
      };
    }

    xhr.onreadystatechange = function () {
      if (xhr.readyState === 4) finish();
    };

    xhr.send(encodeForm(options.data || {}));

    return {
      abort: function () {
        if (done) return;
        abortedByClient = true;
        xhr.abort();
        // Browsers fire readystatechange (readyState 4) synchronously from
        // abort() only for requests already sent; make sure the callbacks run.
        finish();
      }
    };
  };
})(
  typeof globalThis !== "undefined"
    ? globalThis
    : typeof self !== "undefined"
    ? self
    : typeof window !== "undefined"
    ? window
    : this
);
