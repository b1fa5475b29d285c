# frozen_string_literal: true

# Run with:  puma -b tcp://127.0.0.1:9292 examples/chat/config.ru   (or bin/demo)

gem_root = File.expand_path("../..", __dir__)
lib = File.join(gem_root, "lib")
$LOAD_PATH.unshift(lib) unless $LOAD_PATH.include?(lib)

require_relative "app"

# The browser client, straight from the gem's assets/ directory:
#   /assets/message-bus.js, /assets/message-bus-ajax.js
use Rack::Static, urls: ["/assets"], root: gem_root, header_rules: [[:all, { "cache-control" => "no-cache" }]]
# The page's own script and style.
use Rack::Static, urls: ["/chat.js", "/chat.css"], root: Chat::PUBLIC,
                  header_rules: [[:all, { "cache-control" => "no-cache" }]]

use MessageBus::Rack::Middleware

run Chat::App.new
