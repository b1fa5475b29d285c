# frozen_string_literal: true

RSpec.describe "MessageBus lifecycle" do
  it "destroy stops the subscriber thread, makes backend_instance nil and reset! a no-op" do
    b = new_bus
    b.subscribe("/x") { nil }
    expect(b.listening?).to be(true)
    b.destroy
    expect(b.listening?).to be(false)
    expect(b.backend_instance).to be_nil
    expect { b.reset! }.not_to raise_error
    expect { b.destroy }.not_to raise_error
  end

  it "survives destroy / on / off / after_fork cycles and keeps delivering" do
    b = new_bus
    3.times do |round|
      got = Queue.new
      b.subscribe("/cycle") { |m| got << m.data }
      b.after_fork
      b.publish("/cycle", round)
      expect(Timeout.timeout(5) { got.pop }).to eq(round)
      b.off
      expect(b.off?).to be(true)
      b.on
      b.destroy
      b.on
      b.unsubscribe("/cycle")
    end
  end

  it "restarts the timer after destroy then on (§9 Q30)" do
    b = new_bus
    b.timer
    b.destroy
    b.on
    ran = Queue.new
    b.timer.queue(0.01) { ran << :ran }
    expect(Timeout.timeout(5) { ran.pop }).to eq(:ran)
  end

  it "off does not stop a running subscriber thread (§9 Q31)" do
    b = new_bus
    got = Queue.new
    b.subscribe("/x") { |m| got << m.data }
    b.off(disable_publish: false)
    b.publish("/x", "still")
    expect(Timeout.timeout(5) { got.pop }).to eq("still")
  end

  it "keeps MessageBus::Instance objects independent" do
    a = new_bus
    b = new_bus(store: 1)
    got_a = Queue.new
    got_b = Queue.new
    a.subscribe("/x") { |m| got_a << m.data }
    b.subscribe("/x") { |m| got_b << m.data }
    a.publish("/x", "for a")
    b.publish("/x", "for b")
    expect(Timeout.timeout(5) { got_a.pop }).to eq("for a")
    expect(Timeout.timeout(5) { got_b.pop }).to eq("for b")
    sleep 0.05
    expect([got_a.size, got_b.size]).to eq([0, 0])
    a.configure(long_polling_interval: 1)
    expect(b.long_polling_interval).to eq(25_000)
    a.destroy
    expect(b.publish("/x", "b alive")).to be_a(Integer)
  end

  it "kills a thread blocked in a native call cleanly" do
    b = new_bus
    sub = b.backend_instance.open_subscription
    thread = Thread.new { sub.each(&:data) }
    sleep 0.1
    expect(thread.status).to eq("sleep").or eq("run")
    thread.kill
    expect(thread.join(2)).to eq(thread)
    expect(b.publish("/x", 1)).to be_a(Integer)
  end

  it "interrupts a native wait with Timeout" do
    b = new_bus
    native = b.backend_instance.open_subscription.instance_variable_get(:@native)
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    # An hour-long wait: only an interruption ends it within the example.
    expect { Timeout.timeout(0.2) { native._next_batch(10, 3600.0) } }.to raise_error(Timeout::Error)
    expect(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).to be < 30
  end

  def kill_child(pid)
    return unless pid

    Process.kill(:KILL, pid)
    Process.wait(pid)
  end

  it "a forked child publishes and subscribes while the parent keeps working" do
    b = new_bus
    b.publish("/fork", "before")
    parent_got = Queue.new
    b.subscribe("/fork") { |m| parent_got << m.data }
    reader, writer = IO.pipe
    pid = fork do
      reader.close
      b.after_fork
      child_got = Queue.new
      b.subscribe("/fork") { |m| child_got << m.data }
      b.publish("/fork", "from child")
      # The parent publishes meanwhile: on a shared store the child may see that first.
      result = Timeout.timeout(5) do
        loop do
          data = child_got.pop
          break data if data == "from child"
        end
      end
      writer.write([result, b.backlog("/fork").map(&:data)].inspect)
      writer.close
      exit!(0)
    end
    writer.close
    b.publish("/fork", "from parent")
    expect(Timeout.timeout(5) { parent_got.pop }).to eq("from parent")
    _, status = Process.wait2(pid)
    pid = nil
    expect(status.exitstatus).to eq(0)
    child_report = reader.read
    child_got, child_view = eval(child_report) # rubocop:disable Security/Eval -- our own child's inspect output
    expect(child_got).to eq("from child")
    expect(child_view).to include("before", "from child")
    parent_view = b.backlog("/fork").map(&:data)
    if SpecHelpers.backend_name == :memory
      # the memory backend is per process: the child's publish stays in the child
      expect(parent_view).to eq(["before", "from parent"])
    else
      expect(parent_view).to contain_exactly("before", "from child", "from parent")
    end
  ensure
    kill_child(pid)
  end

  { 0 => "without after_fork", 2 => "after_fork called twice (idempotent)" }.each do |explicit, how|
    it "a forked child delivers to its subscribe blocks, #{how}" do
      b = new_bus
      queue = Queue.new
      b.subscribe("/forked") { |m| queue << m.data }
      b.publish("/forked", "before")
      Timeout.timeout(5) { queue.pop }
      reader, writer = IO.pipe
      pid = fork do
        reader.close
        explicit.times { b.after_fork }
        b.publish("/forked", "from the child")
        got = [Timeout.timeout(10) { queue.pop }]
        if SpecHelpers.backend_name != :memory
          writer.puts("ready")
          got << Timeout.timeout(10) { queue.pop }
        end
        sleep 0.3 # a duplicate would show up here
        got << queue.pop until queue.empty?
        writer.puts(JSON.generate(got))
        exit!(0)
      end
      writer.close
      if SpecHelpers.backend_name != :memory
        expect(Timeout.timeout(15) { reader.gets }).to eq("ready\n")
        b.publish("/forked", "from the parent")
      end
      child_got = JSON.parse(Timeout.timeout(15) { reader.gets })
      Process.wait(pid)
      pid = nil
      expected = SpecHelpers.backend_name == :memory ? ["from the child"] : ["from the child", "from the parent"]
      expect(child_got).to eq(expected)
    ensure
      kill_child(pid)
    end
  end

  it "publishes the keepalive when the interval is above 20 seconds" do
    b = new_bus(keepalive_interval: 21)
    job = nil
    allow(b.timer).to(receive(:every).and_wrap_original do |orig, *args, &blk|
      job = blk if args == [21]
      orig.call(*args, &blk)
    end)
    b.subscribe("/x") { nil }
    expect(job).not_to be_nil
    job.call
    msg = b.backlog("/__mb_keepalive__/").last
    expect([msg.data, msg.user_ids]).to eq([Process.pid, [-1]])
  end

  it "does not run the keepalive for intervals of 20 seconds or less" do
    b = new_bus(keepalive_interval: 20)
    expect(b.timer).not_to receive(:every).with(20)
    allow(b.timer).to receive(:every).with(1).and_call_original
    b.subscribe("/x") { nil }
  end

  it "reports diagnostics" do
    b = new_bus
    b.subscribe("/x") { nil }
    expect(b.diagnostics).to include(listening: true, subscriptions: 1, queued_publishes: 0, dropped_publishes: 0)
    closed = %i[timeout delivered replaced refused stopped peer_closed slow_consumer write_timeout unexpected_input error
                client_closed protocol_error ping_timeout]
    expect(b.diagnostics[:web_clients]).to eq(parked: 0, delivered: 0, slow_closed: 0, unreadable: 0,
                                              closed: closed.to_h { |reason| [reason, 0] })
  end
end
