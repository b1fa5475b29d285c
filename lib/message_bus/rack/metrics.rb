# frozen_string_literal: true

require "message_bus"

module MessageBus
  module Rack
    # Serves `MessageBus.metrics_text` (or another bus's) to a Prometheus
    # scraper. Mount it yourself, behind your own authentication, anywhere
    # but under `<base_route>message-bus/` (every path there is a client id):
    #
    #   map("/metrics") { run MessageBus::Rack::Metrics.new }
    class Metrics
      def initialize(bus = MessageBus)
        @bus = bus
      end

      def call(env)
        method = env["REQUEST_METHOD"]
        unless %w[GET HEAD].include?(method)
          return [405, { "Content-Type" => "text/plain", "Allow" => "GET, HEAD" }, ["use GET\n"]]
        end

        text = @bus.metrics_text
        headers = { "Content-Type" => MessageBus::Metrics::CONTENT_TYPE, "Cache-Control" => "no-store",
                    "Content-Length" => text.bytesize.to_s }
        [200, headers, method == "HEAD" ? [] : [text]]
      end
    end
  end
end
