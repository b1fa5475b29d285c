// message-bus-ajax.js has no exports: importing it installs `MessageBus.ajax`
// (an XMLHttpRequest adapter) on the global client loaded before it.
export {};
