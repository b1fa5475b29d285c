# frozen_string_literal: true

require "json"

module MessageBus
  module Rack
    # Judges, on a Ruby thread, the messages Rust cannot: channels under a
    # `register_client_message_filter` prefix, and every message when a custom
    # transport codec is configured (COMPAT.md §3.5 step 6, §5). Rust queues
    # such messages and waits for the verdict: the envelope re-encoded as JSON
    # for web clients, or nil when a filter denies it. Filters see only the
    # message, so one verdict serves every client.
    class RubyGate
      BATCH = 64
      WAIT = 1.0

      def initialize(bus)
        @bus = bus
        @signature = nil
        @thread = nil
        @lock = Mutex.new
      end

      # Tells Rust what to send here, when filters or the codec changed, and
      # keeps the judging thread alive while there is anything to judge.
      def sync(connections)
        filters = @bus.client_message_filters
        codec = @bus.transport_codec
        signature = [filters.length, filters.last&.first, codec.object_id]
        @lock.synchronize do
          if signature != @signature
            prefixes = filters.map(&:first).grep(String)
            everything = !codec.is_a?(MessageBus::Codec::Json) || filters.any? { |prefix, _| !prefix.is_a?(String) }
            connections._configure_gate(prefixes, everything)
            @signature = signature
            @active = everything || !prefixes.empty?
          end
          start(connections) if @active && !@thread&.alive?
        end
      end

      def stop
        thread = @thread
        @thread = nil
        thread&.join(2)
      end

      private

      def start(connections)
        @thread = Thread.new { judge_all(connections) }
        @thread.name = "MessageBus client filters"
        @thread.report_on_exception = false
      end

      def judge_all(connections)
        while (jobs = connections._gate_jobs(BATCH, WAIT))
          jobs.each do |global_id, message_id, channel, data|
            connections._resolve(channel, message_id, verdict(MessageBus::Message.new(global_id, message_id, channel, data)))
          end
        end
      end

      def verdict(msg)
        @bus.decode_message!(msg)
        return nil unless filters_allow?(msg)

        JSON.generate({ "data" => msg.data, "user_ids" => msg.user_ids, "group_ids" => msg.group_ids,
                        "client_ids" => msg.client_ids })
      rescue StandardError => e
        @bus.logger.warn("MessageBus withheld message #{msg.global_id} on #{msg.channel} from web clients: " \
                         "#{e.class}: #{e.message}")
        nil
      end

      # Most recently registered first; any matching filter returning falsy denies.
      def filters_allow?(msg)
        @bus.client_message_filters.reverse_each do |prefix, blk|
          return false if prefix_matches?(prefix, msg.channel) && !blk.call(msg)
        end
        true
      end

      def prefix_matches?(prefix, channel)
        return channel.start_with?(prefix) if prefix.is_a?(String)

        match = prefix.match(channel)
        !match.nil? && match.begin(0).zero?
      end
    end
  end
end
