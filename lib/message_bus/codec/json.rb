# frozen_string_literal: true

require "json"
require "message_bus/codec/base"

module MessageBus
  module Codec
    # The default codec: compact JSON, byte-compatible with the reference gem.
    # Unlike JSON.dump it refuses NaN and Infinity, which no JSON parser
    # (nor the browser client) would read back.
    class Json < Base
      def encode(hash)
        ::JSON.generate(hash, max_nesting: false)
      end

      def decode(payload)
        ::JSON.parse(payload)
      end
    end
  end
end
