# frozen_string_literal: true

module MessageBus
  module Codec
    # A transport codec turns the envelope Hash (data, user_ids, group_ids,
    # client_ids) into the stored string and back.
    class Base
      def encode(_hash)
        raise ConcreteClassMustImplementError, "#{self.class} must implement encode"
      end

      def decode(_payload)
        raise ConcreteClassMustImplementError, "#{self.class} must implement decode"
      end

      class ConcreteClassMustImplementError < StandardError; end
    end

    autoload :Json, "message_bus/codec/json"
    autoload :Oj, "message_bus/codec/oj"
  end
end
