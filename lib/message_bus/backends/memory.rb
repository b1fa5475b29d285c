# frozen_string_literal: true

require "message_bus/backends/base"

module MessageBus
  module Backends
    # A single-process backend kept in Rust memory (COMPAT.md §4.4): message
    # ids are global ids; nothing crosses process boundaries (a forked child
    # starts with a copy of the parent's messages).
    class Memory < Base
      def initialize(config = {}, max_backlog_size = 1000)
        @native = MessageBus::Native::Backend.memory
        super
      end
    end
  end
end

MessageBus::BACKENDS[:memory] = MessageBus::Backends::Memory
