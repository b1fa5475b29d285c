# frozen_string_literal: true

require "json"
require "message_bus/codec/base"

module MessageBus
  module Codec
    # The default codec: compact JSON, byte-compatible with the reference gem.
    # Unlike JSON.dump it refuses NaN and Infinity, which no JSON parser
    # (nor the browser client) would read back.
    class Json < Base
      # Per fiber: `JSON.generate(obj, opts)` builds and configures a new
      # generator State on every call, two thirds of its cost for a small
      # message; a State must not be shared by generations that interleave.
      STATE_KEY = :message_bus_json_state

      def encode(hash)
        (Thread.current[STATE_KEY] ||= ::JSON::State.new(max_nesting: false)).generate(hash)
      end

      # The extension reads plain JSON (no floats, not deeply nested) into
      # the same values as JSON.parse, a few times faster; it answers nil
      # for the rest, which JSON.parse reads (or refuses) as it always did.
      def decode(payload)
        MessageBus::Native._decode_json(payload) || ::JSON.parse(payload)
      end
    end
  end
end
