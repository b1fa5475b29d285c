// Types of `import MessageBus from "message-bus-client"` (the ES module build).
import type { MessageBusClient } from "./message-bus-types.js";

export type {
  MessageBusAjax,
  MessageBusAjaxOptions,
  MessageBusCallback,
  MessageBusClient,
  MessageBusDiagnostics,
  MessageBusOptions,
  MessageBusRequest,
  MessageBusSubscription
} from "./message-bus-types.js";

declare const MessageBus: MessageBusClient;
export default MessageBus;
