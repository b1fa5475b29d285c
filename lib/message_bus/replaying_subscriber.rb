# frozen_string_literal: true

module MessageBus
  # A subscriber that first receives the retained messages after `last_id`,
  # then live ones, with no gap and no duplicate at the switch. The wrapper is
  # registered while the replay lock is held and the backlog is read after
  # that, so every message is either in the replay or arrives live after it;
  # live messages the replay already delivered are skipped by id.
  class ReplayingSubscriber
    def initialize(bus, channel, site_key, last_id, blk)
      @bus = bus
      @channel = channel
      @site_key = site_key
      @current = last_id
      @blk = blk
      # Channel subscriptions count message ids, global ones global ids (§9 Q26).
      @id_of = channel ? :message_id : :global_id
      @replay_site = channel && bus.decode_channel_name(bus.encode_channel_name(channel, site_key))[1]
      @lock = Mutex.new
      @proc = method(:deliver).to_proc
    end

    def to_proc
      @proc
    end

    # Yields (to register the wrapper), then replays the backlog, all under
    # the lock that live deliveries wait for.
    def run
      @lock.synchronize do
        yield
        @bus.backlog(@channel, @current, @site_key).each do |msg|
          @current = msg.public_send(@id_of)
          @blk.call(msg)
        end
      end
    end

    private

    def deliver(msg)
      @lock.synchronize do
        # Live messages of other sites use other id sequences.
        if @channel.nil? || msg.site_id == @replay_site
          id = msg.public_send(@id_of)
          return if id <= @current

          @current = id
        end
        @blk.call(msg)
      end
    end
  end
end
