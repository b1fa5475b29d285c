# frozen_string_literal: true

require "message_bus/backends/base"

module MessageBus
  module Backends
    # A third-party style backend written in Ruby (single process, like the
    # memory backend: message ids are global ids), registered in BACKENDS.
    # It subclasses Base without calling `super`, as reference-era backends do.
    class RubyMemory < Base
      def initialize(_config = {}, max_backlog_size = 1000) # rubocop:disable Lint/MissingSuper -- as reference-era backends do
        @lock = Mutex.new
        @listeners = []
        @max_backlog_size = max_backlog_size
        @subscribed = false
        reset!
      end

      def publish(channel, data, _opts = nil)
        @lock.synchronize do
          id = (@last_global += 1)
          (@channels[channel] ||= []) << [id, data]
          message = MessageBus::Message.new(id, id, channel, data)
          @listeners.each { |q| q << message }
          id
        end
      end

      def last_id(channel)
        @lock.synchronize { @channels.fetch(channel, []).last&.first || 0 }
      end

      def last_ids(*channels)
        channels.map { |c| last_id(c) }
      end

      def backlog(channel, last_id = 0)
        @lock.synchronize { all_messages.select { |m| m.channel == channel && m.message_id > last_id.to_i } }
      end

      def global_backlog(last_id = 0)
        @lock.synchronize { all_messages.select { |m| m.global_id > last_id.to_i } }
      end

      # Every stored message by global id (call with the lock held).
      def all_messages
        @channels.flat_map { |c, list| list.map { |id, d| MessageBus::Message.new(id, id, c, d) } }.sort_by(&:global_id)
      end

      def get_message(channel, message_id)
        backlog(channel, message_id.to_i - 1).find { |m| m.message_id == message_id.to_i }
      end

      def subscribe(channel, last_id = nil, &blk)
        global_subscribe(last_id) { |m| blk.call(m) if m.channel == channel }
      end

      def global_subscribe(last_id = nil, &block)
        queue = Queue.new
        replay = @lock.synchronize do
          @listeners << queue
          last_id ? @channels.flat_map { |c, l| l.map { |id, d| MessageBus::Message.new(id, id, c, d) } } : []
        end
        replay.select { |m| m.global_id > last_id.to_i }.sort_by(&:global_id).each(&block)
        @subscribed = true
        while (m = queue.pop)
          yield m
        end
      ensure
        @lock.synchronize { @listeners.delete(queue) }
      end

      def global_unsubscribe
        @lock.synchronize { @listeners.each { |q| q << nil } }
        @subscribed = false
      end

      def reset!
        @lock.synchronize do
          @channels = {}
          @last_global = 0
        end
      end

      def expire_all_backlogs!
        @lock.synchronize { @channels = {} }
      end

      def after_fork; end

      def destroy
        global_unsubscribe
      end
    end
  end
end

MessageBus::BACKENDS[:ruby_memory] = MessageBus::Backends::RubyMemory
