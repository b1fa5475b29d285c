# frozen_string_literal: true

module MessageBus
  module Backends
    # The backend interface (COMPAT.md §1.12). Methods take *encoded* channel
    # names and return *undecoded* messages.
    #
    # The built-in backends keep their storage in Rust: their constructor
    # builds `@native` (a MessageBus::Native::Backend) and every method below
    # runs there. A third-party backend written in Ruby subclasses Base (with
    # or without calling `super`) and implements the methods itself; those it
    # leaves out raise ConcreteClassMustImplementError, as in the reference gem.
    # Web clients of such a backend are served on a slower Ruby path (see
    # MessageBus::Rack::Middleware).
    class Base
      # A queue of messages filled by Rust; `each` waits with the GVL released.
      class Subscription
        def initialize(native)
          @native = native
        end

        def each(&block)
          while (batch = @native._next_batch(BATCH_SIZE, WAIT_SLICE))
            batch.each(&block)
          end
        end

        def close
          @native._close
        end

        # The global id after which messages arrive (nil when unknown).
        def start
          @native._start
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

      # The Rust backend, or nil for a backend written in Ruby.
      attr_reader :native

      def initialize(config = {}, max_backlog_size = 1000)
        @config = config
        self.max_backlog_size = max_backlog_size
        self.clear_every = config[:clear_every] || 1
      end

      # Plain attributes on a Ruby backend; the Rust backend's settings otherwise.
      SETTINGS.each do |name|
        ivar = :"@#{name}"
        define_method(name) { @native ? @native._setting(name.to_s) : instance_variable_get(ivar) }
        define_method(:"#{name}=") do |value|
          @native ? @native._set_setting(name.to_s, Integer(value)) : instance_variable_set(ivar, value)
        end
      end

      # Whether the firehose subscription is active (a Ruby backend sets
      # `@subscribed` itself).
      def subscribed
        @native ? @native._subscribed? : @subscribed
      end

      def publish(channel, data, opts = nil)
        return (@native || native!(:publish))._publish(channel, data, nil, nil, nil) unless opts

        queue = opts.key?(:queue_in_memory) ? opts[:queue_in_memory] != false : nil
        native!(:publish)._publish(channel, data, int_or_nil(opts[:max_backlog_age]),
                                   int_or_nil(opts[:max_backlog_size]), queue)
      end

      def last_id(channel)
        native!(:last_id)._last_id(channel)
      end

      def last_ids(*channels)
        native!(:last_ids)._last_ids(channels)
      end

      def backlog(channel, last_id = 0)
        native!(:backlog)._backlog(channel, (last_id || 0).to_i)
      end

      def global_backlog(last_id = 0)
        native!(:global_backlog)._global_backlog((last_id || 0).to_i)
      end

      def get_message(channel, message_id)
        native!(:get_message)._get_message(channel, message_id.to_i)
      end

      def reset!
        native!(:reset!)._reset
      end

      # The storage epoch: a random id naming this life of the storage (see
      # MessageBus::Instance#epoch). nil for a backend written in Ruby that
      # does not define it.
      def epoch
        @native&._epoch
      end

      def expire_all_backlogs!
        native!(:expire_all_backlogs!)._expire_all_backlogs
      end

      def after_fork
        native!(:after_fork)._after_fork
      end

      def destroy
        native!(:destroy)._destroy
      end

      # Ends this process's firehose subscriptions. Unlike the reference gem it
      # broadcasts nothing, so other processes keep listening (§9 Q5).
      def global_unsubscribe
        native!(:global_unsubscribe)._global_unsubscribe
      end

      # Blocks the calling thread, yielding every message (undecoded) until
      # `global_unsubscribe` or `destroy`. With `last_id`, the retained
      # messages after that global id come first, then live ones, with no gap
      # and no duplicate.
      def global_subscribe(last_id = nil, &blk)
        raise ArgumentError, "global_subscribe requires a block" unless blk

        subscription = open_subscription(last_id)
        subscription.each(&blk)
      ensure
        subscription&.close
      end

      # A firehose subscription registered at once; `each` drains it.
      def open_subscription(last_id = nil)
        Subscription.new(native!(:open_subscription)._subscribe(last_id&.to_i))
      end

      # Like global_subscribe, only for one encoded channel; `last_id` is a
      # message id of that channel: the retained messages after it come
      # first, then live ones, with no gap and no duplicate. The live
      # subscription is registered before the backlog is read, and live
      # messages the replay covered are skipped by id.
      def subscribe(channel, last_id = nil)
        raise ArgumentError, "subscribe requires a block" unless block_given?

        subscription = open_subscription(nil)
        covered = nil
        if last_id
          backlog(channel, last_id).each do |m|
            yield m
            covered = m.message_id
          end
        end
        subscription.each do |m|
          next unless m.channel == channel

          if covered
            next if m.message_id <= covered

            covered = nil # ids may restart after a reset: compare only once
          end
          yield m
        end
      ensure
        subscription&.close
      end

      def queued_publishes
        @native ? @native._queued_publishes : 0
      end

      def dropped_publishes
        @native ? @native._dropped_publishes : 0
      end

      private

      def native!(method)
        @native || raise(ConcreteClassMustImplementError, "#{self.class} must implement #{method}")
      end

      def int_or_nil(value)
        value ? Integer(value) : nil
      end
    end
  end
end
