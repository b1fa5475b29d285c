# frozen_string_literal: true

# Web clients long-polling through a real Puma cluster while a publisher in
# another process publishes; mid-stream a Puma worker is killed with SIGKILL,
# and a second publisher process is killed. Every client must end with every
# message its publishers reported as published, exactly once and in order.
RSpec.describe "Faults with web clients on a Puma cluster", :integration do
  include ServerHelpers
  include FaultHelpers

  # A streaming client that reconnects with its last id whenever its
  # response ends (timeout, or its worker died). Returns what it received.
  def web_client(port, client_id, channel, stop)
    received = []
    last = -1
    until stop.call
      raw = +""
      begin
        socket = open_request(port, poll_request(client_id, form([[channel, last.to_s]])))
        while socket.wait_readable(5)
          chunk = socket.read_nonblock(65_536, exception: false)
          break if chunk.nil?

          raw << chunk unless chunk == :wait_readable
        end
      rescue SystemCallError, IOError
        nil
      ensure
        socket&.close
      end
      complete_records(raw).each do |m|
        case m["channel"]
        when "/__status"
          last = m["data"][channel] if m["data"].key?(channel)
        when channel
          received << [m["data"]["from"], m["data"]["i"]]
          last = m["message_id"]
        end
      end
      sleep 0.05
    end
    received
  end

  it "loses and duplicates nothing when a worker is SIGKILLed and a publisher process dies" do
    skip "needs a backend shared by processes (Redis, PostgreSQL)" if SpecHelpers.backend_name == :memory

    new_bus # empties the store; the workers must not (a respawned worker would wipe it mid-stream)
    server = start_server(workers: 2, threads: 2, env: { "MB_LONG_POLLING_INTERVAL" => "3000", "MB_RESET" => "0" })
    channel = "/faults/web"
    config = SpecHelpers.backend_config
    steady = FaultHelpers::Publisher.new(config.merge(data_from: "steady"), channel, 150, 15)
    doomed = FaultHelpers::Publisher.new(config.merge(data_from: "doomed"), channel, 150, 15)
    wait_for(timeout: 20, message: "publishers ready") { steady.ready? && doomed.ready? }

    done = false
    clients = Array.new(4) { |i| Thread.new { web_client(server.port, "web#{i}", channel, -> { done }) } }
    sleep 0.5 # the clients' first polls (with -1) return their status at once
    steady.go
    doomed.go
    wait_for(timeout: 20, message: "50 publishes") { steady.count >= 50 }
    workers = `pgrep -P #{server.pid}`.split.map(&:to_i)
    expect(workers.length).to eq(2)
    Process.kill(:KILL, workers.first)
    Process.kill(:KILL, doomed.pid)
    wait_for(timeout: 30, message: "the steady publisher to finish") { steady.finished? }
    published = steady.outcomes.values_at("id", "queued").flatten.compact.map { |i| ["steady", i] } +
                doomed.outcomes.values_at("id", "queued").flatten.compact.map { |i| ["doomed", i] }
    sleep 4 # one more long-poll round for every client
    done = true
    results = clients.map(&:value)
    results.each_with_index do |received, i|
      lost = published - received
      duplicated = received.tally.select { |_, n| n > 1 }.keys
      puts format("puma worker SIGKILL client %d: published %d  delivered %d  lost %d  duplicated %d",
                  i, published.length, received.length, lost.length, duplicated.length)
      expect(lost).to eq([])
      expect(duplicated).to eq([])
      %w[steady doomed].each do |from|
        mine = received.select { |f, _| f == from }.map(&:last)
        expect(mine).to eq(mine.sort)
      end
    end
  ensure
    done = true
    steady&.stop
    doomed&.stop
  end
end
