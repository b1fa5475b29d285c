# frozen_string_literal: true

require "oj"
require "message_bus/codec/base"

module MessageBus
  module Codec
    # JSON through the oj gem (compat mode produces the same bytes as Json).
    class Oj < Base
      def initialize(options = { mode: :compat })
        super()
        @options = options
      end

      def encode(hash)
        ::Oj.dump(hash, @options)
      end

      def decode(payload)
        ::Oj.load(payload, @options)
      end
    end
  end
end
