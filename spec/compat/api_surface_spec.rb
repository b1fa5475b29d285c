# frozen_string_literal: true

require "json"
require "open3"

# The README's claim, "everything of the reference gem's server-side API is
# there": the public classes, methods and constants of the reference gem,
# listed by loading it in a process of its own, exist here and accept every
# call the reference's accept. (Behaviour is the other specs' business.)
API_REFERENCE_LIB = ENV.fetch("MB_REFERENCE_LIB", nil)
API_DUMP = File.expand_path("api_dump.rb", __dir__)
API_OURS = File.expand_path("../../lib", __dir__)

# Constants of the reference that are its implementation, not its API.
API_INTERNAL = {
  "MessageBus::Instance" => %w[Synchronizer],
  "MessageBus::Client" => %w[CHUNKED_ENCODING COLON_SPACE CONNECTION_CLOSE CONTENT_LENGTH HTTP_11 NEWLINE NO_SNIFF
                             TYPE_JSON TYPE_TEXT]
}.freeze

RSpec.describe "The reference gem's server-side API" do
  def dump(lib)
    out, err, status = Open3.capture3("ruby", "-I", lib, API_DUMP)
    raise "listing the API of #{lib} failed: #{err}" unless status.success?

    JSON.parse(out)
  end

  # Whether a method with parameter kinds `ours` takes every call that one
  # with `theirs` takes (positional counts, rest, keywords; blocks always pass).
  def accepts?(ours, theirs)
    count = ->(list, kind) { list.count(kind) }
    positional_max = ->(list) { list.include?("rest") ? Float::INFINITY : count.call(list, "req") + count.call(list, "opt") }
    return false if count.call(ours, "req") > count.call(theirs, "req")
    return false if positional_max.call(ours) < positional_max.call(theirs)
    return false if theirs.include?("keyrest") && !ours.include?("keyrest")

    count.call(ours, "keyreq") <= count.call(theirs, "keyreq")
  end

  it "exists here with compatible signatures" do
    skip "set MB_REFERENCE_LIB to the reference gem's lib directory" unless API_REFERENCE_LIB && Dir.exist?(API_REFERENCE_LIB)

    reference = dump(API_REFERENCE_LIB)
    ours = dump(API_OURS)
    problems = []
    checked = 0
    reference.each do |owner, parts|
      mine = ours[owner]
      next problems << "#{owner} is missing" unless mine

      parts.each do |kind, entries|
        if kind == "constants"
          (entries - mine[kind] - API_INTERNAL.fetch(owner, [])).each { |c| problems << "#{owner}::#{c} is missing" }
          next
        end
        entries.each do |name, params|
          checked += 1
          if !mine[kind].key?(name)
            problems << "#{owner} #{kind} method #{name} is missing"
          elsif !accepts?(mine[kind][name], params)
            problems << "#{owner} #{kind} method #{name} takes #{mine[kind][name]}, the reference's #{params}"
          end
        end
      end
    end
    expect(problems).to eq([])
    expect(checked).to be > 200
    puts format("reference API: %d public methods of %d classes and modules checked", checked, reference.size)
  end
end
