# frozen_string_literal: true

# Security property test of targeting and sites (COMPAT.md §2, §3.5): random
# targets and random identities, through every transport, against a real Puma
# with MB_MULTISITE=1. Each round publishes one targeted message (random site)
# on a fresh channel, then an untargeted sentinel; an identity must see the
# targeted message exactly when its site matches and §3.5 allows it:
#   live, chunked long poll      (stream read until the sentinel arrives)
#   live, Dont-Chunk long poll   (answer = first deliverable message)
#   backlog, ?dlp=t              (poll from 0)
#   backlog, chunked long poll   (poll from 0: backlog is the first chunk)
#   backlog, Dont-Chunk          (poll from 0: immediate answer)
#   live and backlog, WebSocket  (subscribed from 0 with the identity's
#                                 headers, then the same socket moved back to 0)
#   live, Server-Sent Events     (a stream from now, -1, read until the sentinel)
#   backlog, Server-Sent Events  (a stream from 0, and one resumed with the live
#                                 stream's first event id as Last-Event-ID)
# Seeded from the RSpec seed. Rounds via MB_TARGETING_ROUNDS.
require_relative "../support/websocket_client"
require_relative "../support/sse_client"

TargetIdentity = Struct.new(:client_id, :user_id, :group_ids, :site)

RSpec.describe "Targeting and site isolation through every transport", :integration do
  include ServerHelpers

  before(:all) do
    # A long interval: a round under load must not outlast a parked poll (nothing here waits for one to end).
    @server = start_server(threads: 6, env: { "MB_MULTISITE" => "1", "MB_LONG_POLLING_INTERVAL" => "60000" })
    @servers.delete(@server)
  end

  after(:all) { stop_server(@server) }

  let(:server) { @server }
  let(:rng) { Random.new(RSpec.configuration.seed) }

  def pick(list) = list[rng.rand(list.size)]
  def subset(list) = list.select { rng.rand(2).zero? }

  def random_identity(index)
    TargetIdentity.new("c#{pick(%w[a b])}#{index}", pick([nil, 1, 2, "1", 1.0]), subset([10, 11, "10", 10.0]), pick(%w[a b]))
  end

  # Lists as the publisher passes them (JSON: integers, floats and strings survive).
  # (publish rejects empty lists, §1.5: an empty subset means no list.)
  def random_targets(identities)
    {
      user_ids: rng.rand(3).zero? ? nil : subset([1, 2, "1", 3]),
      group_ids: rng.rand(3).zero? ? nil : subset([10, 11, "10", 12]),
      client_ids: rng.rand(2).zero? ? nil : subset(identities.map(&:client_id))
    }.transform_values { |list| list.nil? || list.empty? ? nil : list }
  end

  # COMPAT.md §3.5 plus the site rule, written out independently.
  def allowed?(targets, site, who)
    return false unless site == who.site

    clients = targets[:client_ids] || []
    return false unless clients.empty? || clients.include?(who.client_id)

    users = targets[:user_ids] || []
    groups = targets[:group_ids] || []
    return true if users.empty? && groups.empty?

    user_ok = !who.user_id.nil? && users.any? { |u| u == who.user_id } # Ruby ==: 1 == 1.0, 1 != "1"
    group_ok = groups.any? { |g| who.group_ids.any? { |m| g.eql?(m) } } # hash equality: 10 and 10.0 differ
    user_ok || group_ok
  end

  def headers_for(who, extra = {})
    { "X-User-Id" => JSON.generate(who.user_id), "X-Group-Ids" => JSON.generate(who.group_ids),
      "X-Site-Id" => who.site }.merge(extra)
  end

  def data_seen(payloads, channel)
    payloads.flatten.select { |m| m["channel"] == channel }.map { |m| m["data"] }
  end

  def body_payloads(raw)
    head, body = raw.split("\r\n\r\n", 2)
    head.include?("transfer-encoding: chunked") ? stream_payloads(raw) : [JSON.parse(body)]
  end

  # Parks a long poll per identity (from id 0 of `channel`, which is empty).
  def park(identities, channel, chunked:)
    sockets = identities.map do |who|
      extra = chunked ? {} : { "Dont-Chunk" => "1" }
      s = open_request(server.port, poll_request(who.client_id, form([[channel, "0"]]), headers: headers_for(who, extra)))
      buffer = +""
      read_until(s, /\r\n\r\n7\r\n\[\]\r\n\|\r\n\r\n/, buffer) if chunked # parked: the first empty chunk arrived
      [s, buffer]
    end
    sleep 0.25 unless chunked # no parked signal without chunking
    sockets
  end

  def live_round(identities, channel, targets, site, chunked:)
    sockets = park(identities, channel, chunked: chunked)
    publish_via(server, channel, "secret", targets.merge(site_id: site))
    %w[a b].each { |s| publish_via(server, channel, "sentinel", site_id: s) }
    sockets.map do |s, buffer|
      raw = chunked ? read_until(s, %("data":"sentinel"), buffer, timeout: 5) : read_all(s, timeout: 5)
      s.close unless s.closed?
      data_seen(body_payloads(chunked ? "#{raw}0\r\n\r\n" : raw), channel)
    end
  end

  def backlog_views(who, channel)
    body = form([[channel, "0"]])
    [
      read_all(open_request(server.port, poll_request(who.client_id, body, query: "dlp=t", headers: headers_for(who)))),
      read_all(open_request(server.port, poll_request(who.client_id, body, headers: headers_for(who, "Dont-Chunk" => "1")))),
      open_request(server.port, poll_request(who.client_id, body, headers: headers_for(who))).then do |s|
        read_until(s, %("data":"sentinel"))
      ensure
        s.close
      end
    ].map { |raw| data_seen(body_payloads(raw.include?("chunked") ? "#{raw}0\r\n\r\n" : raw), channel) }
  end

  # Per identity: what a WebSocket subscribed from 0 saw live, then what the
  # same socket got when moved back to 0 (the backlog).
  def websocket_views(identities, channel, targets, site)
    probe = { "/__probe" => 1 << 40 }
    registered = ->(m) { m.any? { |x| x["channel"] == "/__status" && x["data"].key?("/__probe") } }
    clients = identities.map do |who|
      client = WebSocketClient.open(server.port, who.client_id, headers: headers_for(who))
      client.subscribe({ channel => 0 }.merge(probe))
      client.messages_until(&registered)
      client
    end
    publish_via(server, channel, "secret", targets.merge(site_id: site))
    %w[a b].each { |s| publish_via(server, channel, "sentinel", site_id: s) }
    clients.map do |client|
      live = client.messages_until(timeout: 5) { |m| m.any? { |x| x["data"] == "sentinel" } }
      client.subscribe({ channel => 0 }.merge(probe))
      backlog = client.messages_until(timeout: 5, &registered)
      [data_seen(live, channel), data_seen(backlog, channel)]
    ensure
      client.close_socket
    end
  end

  # Per identity: what an event stream opened from now (-1) saw live, then
  # the backlog as two more streams got it: one from 0, one resumed with the
  # live stream's first event id (Last-Event-ID, as an EventSource reconnects).
  def sse_views(identities, channel, targets, site)
    sentinel = ->(events) { events.flat_map(&:last).any? { |x| x["data"] == "sentinel" } }
    streams = []
    identities.each do |who|
      streams << SseClient.open(server.port, who.client_id, form([[channel, "-1"]]), headers: headers_for(who))
      streams.last.events_until(&:any?) # the status event: the stream is registered
    end
    publish_via(server, channel, "secret", targets.merge(site_id: site))
    %w[a b].each { |s| publish_via(server, channel, "sentinel", site_id: s) }
    streams.zip(identities).map do |stream, who|
      live = stream.events_until(&sentinel)
      resumed = { "Last-Event-ID" => live.first.first } # the status event's id: {channel: 0}
      backlogs = [[form([[channel, "0"]]), {}], [form([[channel, "-1"]]), resumed]].map do |query, extra|
        streams << (backlog = SseClient.open(server.port, who.client_id, query, headers: headers_for(who, extra)))
        backlog.events_until(&sentinel).tap { backlog.close }
      end
      [live, *backlogs].map { |events| data_seen(events.map(&:last), channel) }
    end
  ensure
    streams.each(&:close)
  end

  it "delivers a targeted message exactly to the allowed identities of its site, on every path" do
    rounds = Integer(ENV.fetch("MB_TARGETING_ROUNDS", "6"))
    seen_counts = Hash.new(0)
    rounds.times do |round|
      identities = Array.new(6) { |i| random_identity(i) }
      targets = random_targets(identities)
      site = pick(%w[a b])
      expected = identities.map { |who| allowed?(targets, site, who) }
      context = "round #{round}: #{targets.inspect} on site #{site}"

      [true, false].each do |chunked|
        channel = "/t/#{round}/#{chunked}"
        views = live_round(identities, channel, targets, site, chunked: chunked)
        identities.each_with_index do |who, i|
          live = views[i]
          expect(live.include?("secret")).to eq(expected[i]), "#{context}, live chunked=#{chunked}, #{who.inspect}: #{live}"
          expect(live.count("secret")).to be <= 1
          backlog_views(who, channel).each_with_index do |seen, path|
            expect(seen.count("secret")).to eq(expected[i] ? 1 : 0), "#{context}, backlog path #{path}, #{who.inspect}: #{seen}"
            expect(seen.count("sentinel")).to eq(1) # its own site's sentinel only
          end
          seen_counts[expected[i]] += 1
        end
      end

      websocket_views(identities, "/t/#{round}/ws", targets, site).each_with_index do |(live, backlog), i|
        who = identities[i]
        expect(live.count("secret")).to eq(expected[i] ? 1 : 0), "#{context}, WebSocket live, #{who.inspect}: #{live}"
        expect(backlog.count("secret")).to eq(expected[i] ? 1 : 0), "#{context}, WebSocket backlog, #{who.inspect}: #{backlog}"
        expect([live.count("sentinel"), backlog.count("sentinel")]).to eq([1, 1]) # its own site's only
      end

      sse_views(identities, "/t/#{round}/sse", targets, site).each_with_index do |(live, *backlogs), i|
        who = identities[i]
        expect(live.count("secret")).to eq(expected[i] ? 1 : 0), "#{context}, SSE live, #{who.inspect}: #{live}"
        backlogs.each_with_index do |seen, path|
          expect(seen.count("secret")).to eq(expected[i] ? 1 : 0), "#{context}, SSE backlog #{path}, #{who.inspect}: #{seen}"
        end
        expect([live, *backlogs].map { |seen| seen.count("sentinel") }).to eq([1, 1, 1]) # its own site's only
      end
    end
    # The generator must produce both outcomes.
    expect(seen_counts[true]).to be > 0
    expect(seen_counts[false]).to be > 0
  end

  it "keeps channels inside their site and rejects $|$ in channel names when a site applies" do
    publish_via(server, "/same", "for-a", site_id: "a")
    publish_via(server, "/same", "for-b", site_id: "b")
    %w[a b].each do |site|
      who = TargetIdentity.new("x", nil, [], site)
      request = poll_request("x", form([["/same", "0"]]), query: "dlp=t", headers: headers_for(who))
      seen = body_payloads(read_all(open_request(server.port, request)))
      expect(data_seen(seen, "/same")).to eq(["for-#{site}"])
    end
    who = TargetIdentity.new("x", nil, [], "a")
    ["/same$|$b", "/x$|$"].each do |channel|
      status, = http(server.port, "POST", "/message-bus/x/poll?dlp=t", form([[channel, "0"]]),
                     headers_for(who, "Content-Type" => "application/x-www-form-urlencoded"))
      expect(status).to eq(400)
    end
  end

  it "stores channels with |, $$123$$, spaces and unicode under distinct keys, read back separately" do
    channels = ["/p|q", "/p$$123$$q", "/p q", "/ü✓", "/p|q|r", "/p"]
    ids = channels.map { |c| publish_via(server, c, "data of #{c}", site_id: "a") }
    expect(ids).to all(be_a(Integer))
    who = TargetIdentity.new("k", nil, [], "a")
    channels.each do |c|
      request = poll_request("k", form([[c, "0"]]), query: "dlp=t", headers: headers_for(who))
      seen = body_payloads(read_all(open_request(server.port, request))).flatten
      expect(seen.map { |m| m["data"] }).to eq(["data of #{c}"])
      # Q19 (kept): a literal $$123$$ reads back as | where the wire string is parsed (Redis).
      expect([c, c.gsub("$$123$$", "|")]).to include(seen.first["channel"])
    end
    next unless SpecHelpers.backend_name == :redis

    db = SpecHelpers.backend_config[:redis_config][:db].to_s
    redis = ->(*args) { IO.popen(["redis-cli", "-n", db, "--raw", *args], &:read) }
    channels.each do |c|
      key = "#{c}$|$a"
      expect(redis.call("ZCARD", "__mb_backlog_n_#{key}").strip).to eq("1"), key
      expect(redis.call("GET", "__mb_backlog_id_n_#{key}").strip).to eq("1"), key
      member = redis.call("ZRANGE", "__mb_backlog_n_#{key}", "0", "-1").strip
      expect(member.split("|", 3)[2]).to start_with("#{key.gsub('|', '$$123$$')}|{\"data\":\"data of #{c}\"")
    end
  end

  it "treats the broadcast route as a client id in production without Rails (allow_broadcast off by default)" do
    # No reset at boot: this server shares the store with the file's other
    # server, whose parked polls a reset would end (a storage reset closes them).
    prod = start_server(env: { "RACK_ENV" => "production", "MB_DEFAULT_BROADCAST" => "1", "MB_RESET" => "0" })
    status, _, body = http(prod.port, "POST", "/message-bus/broadcast?channel=/b&data=x&dlp=t", "",
                           "Content-Type" => "application/x-www-form-urlencoded")
    expect([status, body]).to eq([200, "[]"]) # an empty poll by client "broadcast", not "sent"
    status, _, body = http(prod.port, "POST", "/message-bus/other/poll?dlp=t", form([["/b", "-1"]]),
                           "Content-Type" => "application/x-www-form-urlencoded")
    expect(status).to eq(200)
    expect(JSON.parse(body)).to eq([{ "global_id" => -1, "message_id" => -1, "channel" => "/__status", "data" => { "/b" => 0 } }])
  end
end
