# frozen_string_literal: true

# Property test of site isolation (COMPAT.md §2, issue 12 D1/D1b) against real
# Pumas, one with a `site_id_lookup` (X-Site-Id header, nil without it) and one
# without. For every {lookup configured or not} × {client site nil, a, b} ×
# {ordinary channel, /global/ channel}, messages published with site nil, a
# and b must reach a client exactly when the reference would give them to it:
# with a lookup, the sites must be equal (nil encodes as `channel$|$`, like a
# publish without site); without one, only site-less messages (the header
# means nothing then); /global/ channels are shared by all sites. Checked on
# the backlog (poll from 0) and live, through every transport: poll (?dlp=t),
# long poll (HTTP/1.0, never chunked), chunked long poll, Dont-Chunk long poll.
# Random crafted channel names carrying the site token (seeded from the
# RSpec seed, MB_SITE_CRAFTED per case) are a 400 on every transport, for
# every identity, and reveal nothing.
RSpec.describe "Site encoding of web clients through every transport", :integration do
  include ServerHelpers

  sites = [nil, "a", "b"]
  transports = %i[poll long_poll chunked dont_chunk]
  token = "$|$"
  let(:sites) { sites }
  let(:transports) { transports }
  let(:token) { token }

  before(:all) do
    # Longer than the examples: a parked poll is only ever answered by a message.
    env = { "MB_LONG_POLLING_INTERVAL" => "60000" }
    @servers_by_lookup = {
      true => start_server(threads: 4, env: env.merge("MB_MULTISITE" => "1")),
      false => start_server(threads: 4, env: env)
    }
    @servers_by_lookup.each_value { |s| @servers.delete(s) }
  end

  after(:all) { @servers_by_lookup.each_value { |s| stop_server(s) } }

  let(:rng) { Random.new(RSpec.configuration.seed) }

  def status_of(raw) = raw[%r{\AHTTP/1\.[01] (\d+)}, 1].to_i

  def headers_for(site, transport)
    headers = site ? { "X-Site-Id" => site } : {}
    transport == :dont_chunk ? headers.merge("Dont-Chunk" => "1") : headers
  end

  def request_for(transport, client_id, body, site, content_type: nil)
    headers = headers_for(site, transport)
    headers["Content-Type"] = content_type if content_type
    poll_request(client_id, body, query: transport == :poll ? "dlp=t" : nil, headers: headers,
                                  version: transport == :long_poll ? "1.0" : "1.1")
  end

  # The JSON arrays of a response, streamed or not.
  def payloads(raw)
    head, body = raw.split("\r\n\r\n", 2)
    head.include?("transfer-encoding: chunked") ? stream_payloads(raw) : [JSON.parse(body)]
  end

  def data_on(raw, channel)
    payloads(raw).flatten.select { |m| m["channel"] == channel }.map { |m| m["data"] }
  end

  # What the reference gives a client of `client_site` from a message
  # published with `message_site` (§2; /global/ channels are never encoded).
  def visible?(lookup, client_site, message_site, global)
    return true if global
    return message_site.nil? unless lookup

    client_site == message_site
  end

  def published_data(channel, site) = "#{channel} from site #{site || 'none'}"

  # The backlog from id 0 through `transport`; a chunked answer is read up
  # to its first chunk (the backlog), then closed.
  def backlog_through(server, transport, channel, site)
    request = request_for(transport, "b-#{transport}", form([[channel, "0"]]), site)
    socket = open_request(server.port, request)
    if transport == :chunked
      begin
        read_until(socket, /\r\n\|\r\n\r\n/)
      ensure
        socket.close
      end
    else
      read_all(socket)
    end
  end

  def parked_count(server)
    JSON.parse(http(server.port, "GET", "/diagnostics")[2])["web_clients"]["parked"]
  end

  # Parks one client per live transport on `channel`, from its current id.
  def park_all(server, channel, site, tag)
    before = parked_count(server)
    sockets = (transports - [:poll]).to_h do |transport|
      socket = open_request(server.port, request_for(transport, "l-#{tag}-#{transport}", form([[channel, ""]]), site))
      buffer = +""
      read_until(socket, /\r\n\r\n7\r\n\[\]\r\n\|\r\n\r\n/, buffer) if transport == :chunked
      [transport, [socket, buffer]]
    end
    wait_for(timeout: 10, message: "3 parked clients") { parked_count(server) >= before + 3 }
    sockets
  end

  it "gives each client exactly the messages of its site, on the backlog and live, through every transport" do
    checks = 0
    [true, false].each do |lookup|
      server = @servers_by_lookup[lookup]
      [false, true].each do |global|
        sites.each do |client_site|
          name = "#{lookup}-#{global}-#{client_site || 'none'}"
          channel = "#{global ? '/global' : ''}/p/#{name}"
          sockets = park_all(server, channel, client_site, name)
          order = sites.shuffle(random: rng)
          order.each { |site| publish_via(server, channel, published_data(channel, site), site_id: site) }
          expected = order.select { |site| visible?(lookup, client_site, site, global) }
                          .map { |site| published_data(channel, site) }
          context = "lookup #{lookup}, client site #{client_site.inspect}, #{channel}, published in order #{order.inspect}"
          expect(expected).not_to be_empty, context

          transports.each do |transport|
            seen = data_on(backlog_through(server, transport, channel, client_site), channel)
            expect(seen.sort).to eq(expected.sort), "#{context}, backlog via #{transport}: #{seen}"
            checks += 1
          end

          # Live: a closing marker per site, then read the chunked stream up to its own.
          marker = "end #{channel}"
          sites.each { |site| publish_via(server, channel, "#{marker} #{site || 'none'}", site_id: site) }
          own_marker = Regexp.new(Regexp.escape("#{marker} #{(global ? sites.last : lookup && client_site) || 'none'}"))
          sockets.each do |transport, (socket, buffer)|
            raw = transport == :chunked ? "#{read_until(socket, own_marker, buffer)}0\r\n\r\n" : read_all(socket)
            socket.close unless socket.closed?
            seen = data_on(raw, channel).grep_v(/\Aend /)
            if transport == :chunked
              expect(seen).to eq(expected), "#{context}, live via #{transport}: #{seen}"
            else
              expect(seen).to eq([expected.first]), "#{context}, live via #{transport}: #{seen}"
            end
            checks += 1
          end
        end
      end
    end
    warn "  site encoding: #{checks} backlog and live views checked"
    expect(checks).to eq(2 * 2 * sites.size * (transports.size + 3))
  end

  def crafted_name
    base = ["/secret", "/global/g", "", "/p", "/ü✓"][rng.rand(5)]
    suffix = ["a", "b", "", "a#{token}b", "zz", token][rng.rand(6)]
    case rng.rand(4)
    when 0 then "#{base}#{token}#{suffix}"
    when 1 then "#{token}#{base}"
    when 2 then "#{base}x#{token}"
    else "#{base}#{token}#{suffix}#{token}"
    end
  end

  # A poll body subscribing to `name` (and maybe an ordinary channel), as a
  # form or as JSON.
  def crafted_body(name)
    pairs = [[name, "0"]]
    pairs.insert(rng.rand(2), ["/ordinary", "0"]) if rng.rand(2).zero?
    return [form(pairs), nil] if rng.rand(2).zero?

    [JSON.generate(pairs.to_h.transform_values(&:to_i)), "application/json"]
  end

  it "answers 400 to a channel name carrying the site token, for every identity and transport, and reveals nothing" do
    cases = Integer(ENV.fetch("MB_SITE_CRAFTED", "12"))
    requests = 0
    [true, false].each do |lookup|
      server = @servers_by_lookup[lookup]
      sites.each { |site| publish_via(server, "/secret", "secret of #{site || 'none'}", site_id: site) }
      cases.times do
        name = crafted_name
        body, content_type = crafted_body(name)
        sites.each do |client_site|
          transports.each do |transport|
            request = request_for(transport, "crafted", body, client_site, content_type: content_type)
            raw = read_all(open_request(server.port, request))
            context = "lookup #{lookup}, site #{client_site.inspect}, #{transport}, body #{body.inspect}"
            expect(status_of(raw)).to eq(400), "#{context}: #{raw[0, 300]}"
            expect(raw).to include("must not contain $|$")
            expect(raw).not_to include("secret of")
            requests += 1
          end
        end
      end
    end
    warn "  crafted names: #{requests} requests answered 400"
  end
end
