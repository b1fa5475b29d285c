// A typed chat client: every option and method of message-bus-client, as
// an app would use them. Type-checked by spec/npm/run (`tsc --strict
// --noEmit`) against the packed npm tarball; the `@ts-expect-error` lines
// prove the types reject misuse (tsc fails if such a line type-checks).
import MessageBus from "message-bus-client";
import type { MessageBusAjaxOptions, MessageBusDiagnostics, MessageBusRequest } from "message-bus-client";
import "message-bus-client/ajax";

interface ChatLine {
  from: string;
  text: string;
}

MessageBus.baseUrl = "/forum/";
MessageBus.enableLongPolling = true;
MessageBus.enableChunkedEncoding = true;
MessageBus.enableWebSocket = true;
MessageBus.retryWebSocketAfterRequests = 30;
MessageBus.shareConnection = true;
MessageBus.callbackInterval = 15000;
MessageBus.backgroundCallbackInterval = 60000;
MessageBus.minPollInterval = 100;
MessageBus.maxPollInterval = 3 * 60 * 1000;
MessageBus.minHiddenPollInterval = 1500;
MessageBus.alwaysLongPoll = false;
MessageBus.shouldLongPollCallback = () => document.visibilityState === "visible";
MessageBus.onReset = (channel: string) => {
  if (channel === "/chat/lobby") lines.length = 0; // the backlog starts again: refetch the room
};
MessageBus.firstChunkTimeout = 3000;
MessageBus.retryChunkedAfterRequests = 30;
MessageBus.headers = { "X-CSRF-Token": "token" };
MessageBus.clientId = "chat-" + Math.random().toString(16).slice(2);
MessageBus.xhrImplementation = XMLHttpRequest;

// A custom request function, as jQuery.ajax or message-bus-ajax.js provide.
const fallback = MessageBus.ajax;
MessageBus.ajax = (options: MessageBusAjaxOptions): MessageBusRequest => {
  options.headers["X-Requested-With"] = "XMLHttpRequest";
  if (fallback) return fallback(options);
  const xhr = new XMLHttpRequest();
  xhr.open(options.type, options.url);
  if (options.messageBus.chunked) options.messageBus.onProgressListener(xhr);
  xhr.onload = () => {
    if (xhr.status >= 200 && xhr.status < 300) options.success(xhr.responseText);
    else options.error(xhr, xhr.statusText);
    options.complete();
  };
  xhr.send(new URLSearchParams(Object.entries(options.data).map(([k, v]) => [k, String(v)])));
  return { abort: () => xhr.abort() };
};

const lines: string[] = [];
const onLine = MessageBus.subscribe<ChatLine>(
  "/chat/lobby",
  (line, globalId, messageId) => {
    lines.push(`${line.from}: ${line.text} (#${messageId}, global ${globalId})`);
  },
  -10
);
MessageBus.subscribe("/presence", (data: unknown) => console.log(data));
MessageBus.subscribe("/typing", () => {}, null);

MessageBus.start();
MessageBus.pause();
const state: "started" | "paused" | "stopped" = MessageBus.status();
MessageBus.resume();

for (const sub of MessageBus.callbacks) console.log(sub.channel, sub.last_id);
if (MessageBus.longPoll) MessageBus.longPoll.abort();
if (MessageBus.onVisibilityChange) document.removeEventListener("visibilitychange", MessageBus.onVisibilityChange);

const diagnostics: MessageBusDiagnostics = MessageBus.diagnostics();
const idleFor: number | null = diagnostics.secondsSinceLastAjax;
const overWebSocket: boolean = diagnostics.transport === "websocket" && diagnostics.webSocketOpens > 0;
const leads: boolean = diagnostics.sharing === "leader";
const epoch: string | null = diagnostics.epoch;
console.log(state, idleFor, overWebSocket, leads, epoch, diagnostics.resets, diagnostics.totalAjaxFailures, lines.length);

const removed: boolean = MessageBus.unsubscribe("/chat/lobby", onLine);
MessageBus.unsubscribe("/chat/*");
MessageBus.stop();
console.log(removed, globalThis.MessageBus === MessageBus);

// @ts-expect-error channel names are strings
MessageBus.subscribe(42, () => {});
// @ts-expect-error the last id is a number
MessageBus.subscribe("/chat/lobby", () => {}, "10");
// @ts-expect-error options have their types
MessageBus.callbackInterval = "15s";
// @ts-expect-error the callback gets (data, globalId, messageId)
MessageBus.subscribe<ChatLine>("/chat/lobby", (line: ChatLine, globalId: string) => {});
// @ts-expect-error transports are named
if (diagnostics.transport === "sse") console.log("never");
// @ts-expect-error no such method
MessageBus.noConflict();
