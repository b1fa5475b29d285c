// Types of `require("message-bus-client")` (CommonJS: module.exports is the
// client) and of the global `MessageBus` set by a script tag. With
// esModuleInterop, `import MessageBus from "message-bus-client"` too.
import type * as Types from "./message-bus-types";

declare const MessageBus: Types.MessageBusClient;
declare namespace MessageBus {
  type Ajax = Types.MessageBusAjax;
  type AjaxOptions = Types.MessageBusAjaxOptions;
  type Callback<T = any> = Types.MessageBusCallback<T>;
  type Client = Types.MessageBusClient;
  type Diagnostics = Types.MessageBusDiagnostics;
  type Options = Types.MessageBusOptions;
  type Request = Types.MessageBusRequest;
  type Subscription = Types.MessageBusSubscription;
}
export = MessageBus;
