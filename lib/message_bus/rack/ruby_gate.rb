# frozen_string_literal: true

require "message_bus/web_judge"

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
            prefixes, everything = WebJudge.judged(@bus)
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
          jobs.each do |msg|
            # The verdict decodes the message in place: keep its stored channel name.
            channel = msg.channel
            connections._resolve(channel, msg.message_id, verdict(msg))
          end
        end
      end

      def verdict(msg)
        WebJudge.verdict(@bus, msg)
      end
    end
  end
end
