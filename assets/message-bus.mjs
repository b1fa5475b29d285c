// ES module entry for the message_bus browser client.
//
//   import MessageBus from "/assets/message-bus.mjs";
//   import "/assets/message-bus-ajax.js"; // when jQuery is not on the page
//
// Evaluates the UMD build (which also sets the global `MessageBus`, needed by
// message-bus-ajax.js) and re-exports the same object.
import "./message-bus.js";

export default globalThis.MessageBus;
