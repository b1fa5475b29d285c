// CommonJS users: `require("message-bus-client")` is the client itself.
import MessageBus = require("message-bus-client");

const client: MessageBus.Client = MessageBus;
const options: Partial<MessageBus.Options> = { baseUrl: "/", enableLongPolling: false };
Object.assign(client, options);
const onMessage: MessageBus.Callback<string> = (data, globalId, messageId) => console.log(data, globalId, messageId);
client.subscribe("/news", onMessage, -1);
// The reference package's file path works too.
import Same = require("message-bus-client/assets/message-bus.js");
console.log(Same === MessageBus);
