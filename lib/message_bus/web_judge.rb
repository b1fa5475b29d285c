# frozen_string_literal: true

require "json"

module MessageBus
  # What Ruby decides for web clients, on every path that serves them: the
  # client message filters (COMPAT.md §3.5 step 6), and the envelopes only
  # Ruby can read (a custom transport codec, §5). Filters see only the
  # message, so one verdict serves every client.
  module WebJudge
    module_function

    # `[string prefixes, everything]`: the channels whose messages Ruby must
    # judge (everything with a Regexp filter or a custom codec).
    def judged(bus)
      filters = bus.client_message_filters
      everything = !bus.transport_codec.is_a?(MessageBus::Codec::Json) || filters.any? { |prefix, _| !prefix.is_a?(String) }
      [filters.map(&:first).grep(String), everything]
    end

    # The envelope of a stored (undecoded) message as JSON for web clients,
    # or nil when a filter denies it or it cannot be decoded.
    def verdict(bus, msg)
      bus.decode_message!(msg)
      return nil unless filters_allow?(bus, msg)

      JSON.generate({ "data" => msg.data, "user_ids" => msg.user_ids, "group_ids" => msg.group_ids,
                      "client_ids" => msg.client_ids })
    rescue StandardError => e
      bus.log_warning("withheld message #{msg.global_id} on #{msg.channel} from web clients: " \
                      "#{e.class}: #{e.message}")
      nil
    end

    # Most recently registered first; any matching filter returning falsy denies.
    def filters_allow?(bus, msg)
      bus.client_message_filters.reverse_each do |prefix, blk|
        return false if prefix_matches?(prefix, msg.channel) && !blk.call(msg)
      end
      true
    end

    def prefix_matches?(prefix, channel)
      return channel.start_with?(prefix) if prefix.is_a?(String)

      match = prefix.match(channel)
      !match.nil? && match.begin(0).zero?
    end

    # `[prefixes, everything, verdict proc]` for MessageBus::Native._client_backlog.
    def for_backlog(bus)
      prefixes, everything = judged(bus)
      return [[], false, nil] if prefixes.empty? && !everything

      verdict = lambda { |global_id, message_id, channel, data|
        verdict(bus, MessageBus::Message.new(global_id, message_id, channel, data))
      }
      [prefixes, everything, verdict]
    end
  end
end
