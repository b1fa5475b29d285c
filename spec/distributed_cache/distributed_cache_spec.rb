# frozen_string_literal: true

require "message_bus/distributed_cache"
require "tmpdir"

RSpec.describe MessageBus::DistributedCache do
  let(:manager) { MessageBus::DistributedCache::Manager.new(bus) }

  after { MessageBus.configure(site_id_lookup: nil) }

  def new_cache(key = "animals", **opts)
    described_class.new(key, manager: manager, **opts)
  end

  # The payloads the manager publishes, as stored (raw envelope JSON).
  def stored_payloads
    bus.backend_instance.backlog(MessageBus::DistributedCache::Manager::CHANNEL_NAME, 0).map(&:data)
  end

  describe "in one process" do
    it "publishes the reference message format" do
      manager.app_version = "v1"
      cache = new_cache
      cache[:frogs] = 5
      cache["set"] = Set[1, 2]
      cache.delete("frogs")
      cache.clear
      origin = cache.identity
      expect(origin).to match(/\A[0-9a-f]{32}#{Process.pid}\z/)
      marshalled = Base64.encode64(Marshal.dump(Set[1, 2]))
      tail = %("origin":"#{origin}","hash_key":"animals","app_version":"v1")
      expect(stored_payloads).to eq(
        [%({"op":"set","key":"frogs","value":5,"marshalled":false,#{tail}}),
         %({"op":"set","key":"set","value":#{JSON.generate(marshalled)},"marshalled":true,#{tail}}),
         %({"op":"delete","key":"frogs",#{tail}}),
         %({"op":"clear",#{tail}})].map { |d| %({"data":#{d},"user_ids":[-1],"group_ids":null,"client_ids":null}) }
      )
      expect(marshalled).to end_with("\n")
    end

    it "mirrors two caches with the same key, keeps the writer's object, and ignores other keys" do
      a = new_cache
      b = new_cache
      other = new_cache("plants")
      a[:list] = [1, 2]
      a["sym"] = :frog
      wait_for(message: "b sees the writes") { b["sym"] }
      expect(b["list"]).to eq([1, 2])
      expect(a["sym"]).to eq(:frog)
      expect(b["sym"]).to eq("frog")
      expect(other.hash).to eq({})
      b.delete("list")
      wait_for(message: "a sees the delete") { !a.hash.key?("list") }
      a[:gone] = nil
      wait_for(message: "b sees a nil value") { b.hash.key?("gone") }
      b.clear
      wait_for(message: "a sees the clear") { a.hash.empty? }
    end

    it "delete(publish: false) only deletes locally and returns the value" do
      a = new_cache
      b = new_cache
      a["k"] = 1
      wait_for { b["k"] == 1 }
      expect(b.delete("k", publish: false)).to eq(1)
      a["marker"] = 1
      wait_for { b["marker"] }
      expect(a["k"]).to eq(1)
    end

    it "keeps sites apart (site from the MessageBus module's lookup) and namespace: false shares one Hash" do
      lookup = proc { Thread.current[:mb_site] }
      MessageBus.site_id_lookup(&lookup)
      bus.site_id_lookup(&lookup)
      a = new_cache
      b = new_cache
      flat = new_cache("flat", namespace: false)
      flat2 = new_cache("flat", namespace: false)
      Thread.current[:mb_site] = "one"
      a["k"] = "one"
      Thread.current[:mb_site] = "two"
      a["k"] = "two"
      wait_for(message: "both sites") { b.hash("one")["k"] && b.hash("two")["k"] }
      expect(b.hash("one")).to eq("k" => "one")
      expect(b.hash("two")).to eq("k" => "two")
      expect(b["k"]).to eq("two")
      Thread.current[:mb_site] = "one"
      expect(b["k"]).to eq("one")
      flat["x"] = 1
      expect(flat.hash("anything")).to eq("x" => 1)
      wait_for(message: "a namespace: false copy") { flat2.hash("one")["x"] }
      expect(flat2.hash).to eq("x" => 1)
    ensure
      Thread.current[:mb_site] = nil
    end

    it "isolates app versions" do
      writer = new_cache
      other_manager = MessageBus::DistributedCache::Manager.new(bus)
      reader = described_class.new("animals", manager: other_manager, app_version: "v2")
      manager.app_version = "v1"
      writer["k"] = "old"
      manager.app_version = "v2"
      writer["k2"] = "new"
      wait_for(message: "the v2 write") { reader["k2"] }
      expect(reader["k"]).to be_nil
    end

    it "with marshal: false stores plain JSON, rejects other objects and refuses marshalled payloads" do
      plain = new_cache(marshal: false)
      trusting = new_cache
      plain["h"] = { "a" => [1, 2] }
      wait_for { trusting["h"] }
      expect(trusting["h"]).to eq("a" => [1, 2])
      expect(stored_payloads.last).to include(%("value":{"a":[1,2]},"marshalled":false))
      expect { plain["s"] = Set[1] }.to raise_error(ArgumentError, /plain JSON/)
      expect { plain["h"] = { a: 1 } }.to raise_error(ArgumentError, /Strings/)
      trusting["set"] = Set[1, 2]
      trusting["after"] = 1
      wait_for { plain["after"] }
      expect(plain["set"]).to be_nil
      expect(log_output.string).to include("refused a marshalled value")
    end
  end

  describe "across two processes" do
    before do
      skip "the memory backend is per process; cross-process examples run on the Redis and PostgreSQL passes" if
        SpecHelpers.backend_name == :memory
      bus # resets the shared store before the child starts
      MessageBus.site_id_lookup { Thread.current[:mb_site] }
      bus.site_id_lookup { Thread.current[:mb_site] }
      @child_log = File.join(Dir.tmpdir, "mb-dcache-child-#{Process.pid}-#{rand(1 << 30)}.log")
      @to_child_r, @to_child = IO.pipe
      @from_child, @from_child_w = IO.pipe
      @child = Process.spawn({ "MESSAGE_BUS_BACKEND" => SpecHelpers.backend_name.to_s },
                             RbConfig.ruby, File.expand_path("child.rb", __dir__),
                             in: @to_child_r, out: @from_child_w, err: @child_log)
      @to_child_r.close
      @from_child_w.close
    end

    after do
      next unless @child

      begin
        @to_child.puts(JSON.generate(op: "exit"))
      rescue IOError, Errno::EPIPE
        nil
      end
      @to_child.close
      @from_child.close
      Timeout.timeout(10) { Process.wait(@child) }
    rescue Timeout::Error
      Process.kill(:KILL, @child)
      Process.wait(@child)
    ensure
      Thread.current[:mb_site] = nil
      File.delete(@child_log) if @child_log && File.exist?(@child_log)
    end

    def child(op, **args)
      @to_child.puts(JSON.generate(args.merge(op: op)))
      line = Timeout.timeout(10) { @from_child.gets }
      raise "child exited (log: #{File.read(@child_log)})" unless line

      reply = JSON.parse(line)
      raise "child failed: #{reply['error']}" if reply["error"]

      reply["result"]
    end

    def child_dump(name = "c", site: nil)
      child("dump", name: name, site: site)
    end

    # Both directions are subscribed once a write from each side is seen by the other.
    def handshake(parent_cache, name = "c")
      wait_for(timeout: 10, message: "the child to see the parent") do
        parent_cache["__ping"] = 1
        child_dump(name).key?("__ping")
      end
      wait_for(timeout: 10, message: "the parent to see the child") do
        child("set", name: name, key: "__pong", value: 1)
        parent_cache["__pong"]
      end
      parent_cache.delete("__ping")
      parent_cache.delete("__pong")
      wait_for(timeout: 10) { child_dump(name).empty? }
    end

    it "converges after sets, deletes and clears in both directions" do
      child("new", name: "c", key: "animals")
      cache = new_cache
      handshake(cache)

      cache["frogs"] = 5
      cache["set"] = Set[3, 1]
      cache["hash"] = { "a" => { "b" => [1] } }
      child("set", name: "c", key: "dogs", value: "woof")
      wait_for(timeout: 10, message: "the child to see three keys") { child_dump.length == 4 }
      expect(child_dump).to eq("frogs" => ["Integer", 5], "set" => ["Set", [1, 3]], "dogs" => %w[String woof],
                               "hash" => ["Hash", { "a" => { "b" => [1] } }])
      wait_for(timeout: 10, message: "the parent to see the child's write") { cache["dogs"] }
      expect(cache.hash.keys.sort).to eq(%w[dogs frogs hash set])

      child("delete", name: "c", key: "frogs")
      wait_for(timeout: 10, message: "the delete") { !cache.hash.key?("frogs") }
      cache.delete("dogs")
      wait_for(timeout: 10, message: "the parent's delete") { !child_dump.key?("dogs") }

      child("clear", name: "c")
      wait_for(timeout: 10, message: "the child's clear") { cache.hash.empty? }
      cache["again"] = true
      wait_for(timeout: 10) { child_dump.key?("again") }
      cache.clear
      wait_for(timeout: 10, message: "the parent's clear") { child_dump.empty? }
    end

    it "isolates app versions until both sides run the same one" do
      child("new", name: "c", key: "animals", app_version: "v1")
      manager.app_version = "v1"
      cache = new_cache
      handshake(cache)

      manager.app_version = "v2"
      cache["new_deploy"] = 1
      manager.app_version = "v1"
      cache["old_deploy"] = 1
      wait_for(timeout: 10) { child_dump.key?("old_deploy") }
      expect(child_dump).not_to have_key("new_deploy")
      child("app_version", value: "v2")
      manager.app_version = "v2"
      cache["both_v2"] = 1
      wait_for(timeout: 10) { child_dump.key?("both_v2") }
      child("set", name: "c", key: "from_child", value: 2)
      wait_for(timeout: 10) { cache["from_child"] }
    end

    it "keeps multisite caches separate" do
      child("new", name: "c", key: "animals")
      cache = new_cache
      handshake(cache)

      Thread.current[:mb_site] = "one"
      cache["k"] = "for one"
      Thread.current[:mb_site] = "two"
      cache["k"] = "for two"
      child("set", name: "c", key: "child", value: "two only", site: "two")
      wait_for(timeout: 10) { child_dump(site: "one")["k"] && child_dump(site: "two")["k"] }
      expect(child_dump(site: "one")).to eq("k" => ["String", "for one"])
      wait_for(timeout: 10) { cache.hash("two")["child"] }
      expect(cache.hash("two")).to eq("k" => "for two", "child" => "two only")
      expect(cache.hash("one")).to eq("k" => "for one")
    end

    it "a marshal: false cache refuses the other process's Marshal payloads" do
      child("new", name: "c", key: "animals", marshal: false)
      cache = new_cache
      handshake(cache)

      cache["set"] = Set[1]
      cache["list"] = [1, 2]
      cache["plain"] = "ok"
      wait_for(timeout: 10) { child_dump.key?("plain") }
      expect(child_dump).to eq("plain" => %w[String ok])
      wait_for(timeout: 10) { File.read(@child_log).scan("refused a marshalled value").length == 2 }
      child("set", name: "c", key: "json", value: { "a" => [1] })
      wait_for(timeout: 10) { cache["json"] }
      expect(cache["json"]).to eq("a" => [1])
    end
  end
end
