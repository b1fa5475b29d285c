# frozen_string_literal: true

module MessageBus
  module Backends
    # The backend interface (COMPAT.md §1.12). Methods take *encoded* channel
    # names and return *undecoded* messages. The built-in backends keep their
    # storage in Rust: a subclass only builds `@native` (a
    # MessageBus::Native::Backend) in its constructor; everything else is here.
    class Base
      # A queue of messages filled by Rust; `each` waits with the GVL released.
      class Subscription
        def initialize(native)
          @native = native
        end

        def each
          while (batch = @native._next_batch(BATCH_SIZE, WAIT_SLICE))
            batch.each { |m| yield MessageBus::Message.new(*m) }
          end
        end

        def close
          @native._close
        end
      end

      class ConcreteClassMustImplementError < StandardError; end

      UNSUB_MESSAGE = "$$UNSUBSCRIBE"

      SETTINGS = %i[max_backlog_size max_global_backlog_size max_backlog_age clear_every
                    max_in_memory_publish_backlog].freeze

      # Messages handed out per wait of the subscriber thread.
      BATCH_SIZE = 512
      # Seconds a subscriber thread waits before checking whether it should stop.
      WAIT_SLICE = 1.0

      attr_reader :native

      def initialize(config = {}, max_backlog_size = 1000)
        @config = config
        raise ConcreteClassMustImplementError, "#{self.class} must set @native" unless @native

        self.max_backlog_size = max_backlog_size
        self.clear_every = config[:clear_every] || 1
      end

      SETTINGS.each do |name|
        define_method(name) { native._setting(name.to_s) }
        define_method(:"#{name}=") { |value| native._set_setting(name.to_s, Integer(value)) }
      end

      def subscribed
        native._subscribed?
      end

      def publish(channel, data, opts = nil)
        opts ||= {}
        queue = opts.key?(:queue_in_memory) ? opts[:queue_in_memory] != false : nil
        native._publish(channel, data, int_or_nil(opts[:max_backlog_age]), int_or_nil(opts[:max_backlog_size]), queue)
      end

      def last_id(channel)
        native._last_id(channel)
      end

      def last_ids(*channels)
        native._last_ids(channels)
      end

      def backlog(channel, last_id = 0)
        native._backlog(channel, (last_id || 0).to_i).map! { |m| to_message(m) }
      end

      def global_backlog(last_id = 0)
        native._global_backlog((last_id || 0).to_i).map! { |m| to_message(m) }
      end

      def get_message(channel, message_id)
        m = native._get_message(channel, message_id.to_i)
        m && to_message(m)
      end

      def reset!
        native._reset
      end

      def expire_all_backlogs!
        native._expire_all_backlogs
      end

      def after_fork
        native._after_fork
      end

      def destroy
        native._destroy
      end

      # Ends this process's firehose subscriptions. Unlike the reference gem it
      # broadcasts nothing, so other processes keep listening (§9 Q5).
      def global_unsubscribe
        native._global_unsubscribe
      end

      # Blocks the calling thread, yielding every message (undecoded) until
      # `global_unsubscribe` or `destroy`. With `last_id`, the retained
      # messages after that global id come first.
      def global_subscribe(last_id = nil, &blk)
        raise ArgumentError, "global_subscribe requires a block" unless blk

        subscription = open_subscription(last_id)
        subscription.each(&blk)
      ensure
        subscription&.close
      end

      # A firehose subscription registered at once; `each` drains it.
      def open_subscription(last_id = nil)
        Subscription.new(native._subscribe(last_id&.to_i))
      end

      # Like global_subscribe, only for one encoded channel; `last_id` is a
      # message id of that channel.
      def subscribe(channel, last_id = nil)
        raise ArgumentError, "subscribe requires a block" unless block_given?

        global_id = nil
        if last_id
          message = get_message(channel, last_id)
          global_id = message ? message.global_id : nil
        end
        global_subscribe(global_id) { |m| yield m if m.channel == channel }
      end

      def queued_publishes
        native._queued_publishes
      end

      def dropped_publishes
        native._dropped_publishes
      end

      private

      def to_message(array)
        MessageBus::Message.new(*array)
      end

      def int_or_nil(value)
        value ? Integer(value) : nil
      end
    end
  end
end
