// Types of the message_bus browser client (assets/message-bus.js).
// Entry points: message-bus.d.ts (CommonJS / script tag) and
// message-bus.d.mts (ES module). Behaviour: COMPATIBILITY.md of the gem.

/** `func(data, globalId, messageId)`: the order of the 4.5 browser client. */
export type MessageBusCallback<T = any> = (data: T, globalId: number, messageId: number) => void;

/** One entry of `MessageBus.callbacks` (a live array). */
export interface MessageBusSubscription {
  channel: string;
  func: MessageBusCallback;
  /** The id of the last message this callback got; -1: from now on. */
  last_id: number;
}

/** What `MessageBus.ajax` receives (the jQuery.ajax subset the client uses). */
export interface MessageBusAjaxOptions {
  url: string;
  data: Record<string, string | number>;
  async: true;
  dataType: "text" | "json";
  type: "POST";
  headers: Record<string, string>;
  messageBus: {
    chunked: boolean;
    onProgressListener(xhr: XMLHttpRequest): void;
  };
  /** An XMLHttpRequest factory; jQuery uses it, the bundled adapter does not. */
  xhr?: () => XMLHttpRequest;
  success(data: any): void;
  error(xhr: XMLHttpRequest, textStatus: string): void;
  complete(): void;
}

/** What `MessageBus.ajax` returns. */
export interface MessageBusRequest {
  abort(): void;
}

export type MessageBusAjax = (options: MessageBusAjaxOptions) => MessageBusRequest;

/** The object `MessageBus.diagnostics()` returns (it also logs it). */
export interface MessageBusDiagnostics {
  stopped: boolean;
  started: boolean;
  paused: boolean;
  callbacks: MessageBusSubscription[];
  totalAjaxCalls: number;
  recentFailures: number;
  totalAjaxFailures: number;
  malformedChunks: number;
  callbackErrors: number;
  /** How the last connection was made ("shared": through the leader tab); null before the first. */
  transport: "websocket" | "streaming" | "long-polling" | "polling" | "shared" | null;
  /** WebSockets this page opened. */
  webSocketOpens: number;
  /** This tab's part in a shared connection. */
  sharing: "leader" | "follower" | "pending" | "off";
  /** The server storage's epoch, once a response told it. */
  epoch: string | null;
  /** Resets of the storage this page noticed. */
  resets: number;
  /** null before the first request. */
  secondsSinceLastAjax: number | null;
}

/** The options: plain properties of `MessageBus`, set before or after `start()`. */
export interface MessageBusOptions {
  /** Allow long polling at all (default true). */
  enableLongPolling: boolean;
  /** Allow streamed (chunked) responses (default true). */
  enableChunkedEncoding: boolean;
  /**
   * Use one WebSocket instead of long polls when the browser, the server and
   * the options allow it (default true): long polling on, no custom `headers`
   * (browsers cannot send them on a WebSocket), the page visible or
   * `alwaysLongPoll`. Falls back to long polling when the socket does not open.
   */
  enableWebSocket: boolean;
  /** Requests made by long polling after a WebSocket failed to open, before trying again (30). */
  retryWebSocketAfterRequests: number;
  /**
   * Share one server connection among the tabs of this browser with the same
   * origin, baseUrl and headers (default true; needs Web Locks and
   * BroadcastChannel, else each tab keeps its own). The tabs then share one
   * client id.
   */
  shareConnection: boolean;
  /** ms between long-poll starts after a request with no data; the backoff unit (15000). */
  callbackInterval: number;
  /** ms between polls when not long polling (60000). */
  backgroundCallbackInterval: number;
  /** ms after a request that brought data (100). */
  minPollInterval: number;
  /** Cap of the failure backoff, ms (180000). */
  maxPollInterval: number;
  /** Hidden tabs start no request within this many ms of another tab's (1500). */
  minHiddenPollInterval: number;
  /** Long-poll even while the page is hidden (false). */
  alwaysLongPoll: boolean;
  /** When set, replaces the "page is visible" test. */
  shouldLongPollCallback: (() => boolean) | undefined;
  /**
   * Called once per subscribed channel when the server's storage was reset
   * (its epoch changed: Redis flushed or restarted empty, the PostgreSQL table
   * recreated). The subscriptions start again from the new storage's first
   * retained message; refetch what the page shows of that channel.
   */
  onReset: ((channel: string) => void) | undefined;
  /** ms a streamed request may go without its first chunk (3000). */
  firstChunkTimeout: number;
  /** Requests made without streaming after a first-chunk timeout (30). */
  retryChunkedAfterRequests: number;
  /** Prefix of the request URLs, ending with "/" ("/"). */
  baseUrl: string;
  /** Extra request headers. */
  headers: Record<string, string>;
  /** The request function: jQuery.ajax, or the one message-bus-ajax.js installs; false until then. */
  ajax: MessageBusAjax | false;
  /** The client id in the request URLs (generated). */
  clientId: string;
  /** An XMLHttpRequest constructor to use instead of the global one. */
  xhrImplementation?: { new (): XMLHttpRequest };
}

export interface MessageBusClient extends MessageBusOptions {
  /** Every subscription, live: the client reads it on each request. */
  readonly callbacks: MessageBusSubscription[];
  /** The request in flight, or null. */
  readonly longPoll: MessageBusRequest | null;
  /** The visibilitychange listener start() installed, or null. */
  readonly onVisibilityChange: (() => void) | null;

  start(): void;
  stop(): void;
  pause(): void;
  resume(): void;
  /** Throws the string "Cannot determine current status" before the first start(). */
  status(): "started" | "paused" | "stopped";
  /**
   * Calls `func(data, globalId, messageId)` for every message of `channel`
   * after `lastId` (-1, the default: from now on; -N: the last N-1 too; N:
   * after id N). Starts the client unless it was stopped. Returns `func`.
   */
  subscribe<T = any>(channel: string, func: MessageBusCallback<T>, lastId?: number | null): MessageBusCallback<T>;
  /** A trailing "*" makes `channel` a prefix. Without `func`, removes every callback of it. */
  unsubscribe(channel: string, func?: MessageBusCallback<any>): boolean;
  diagnostics(): MessageBusDiagnostics;
}

declare global {
  /** Set by message-bus.js when loaded with a script tag (and in every other way too). */
  var MessageBus: MessageBusClient;
}
