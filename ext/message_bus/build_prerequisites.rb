# frozen_string_literal: true

require "rbconfig"

# What a source build of the extension needs besides Ruby's headers, each
# checked so that a missing one is named before cargo fails somewhere deep
# in a dependency's build script.
module MessageBusBuild
  # Where clang-sys (used by bindgen, used by rb-sys) looks for libclang when
  # LIBCLANG_PATH is not set, in the order it tries them.
  LIBCLANG_DIRS = [
    "/usr/lib/llvm-*/lib", "/usr/lib64/llvm*/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64", "/usr/lib", "/usr/local/lib", "/usr/local/opt/llvm/lib", "/opt/homebrew/opt/llvm/lib",
    "/Library/Developer/CommandLineTools/usr/lib",
    "/Applications/Xcode.app/Contents/Developer/Toolchains/XcodeDefault.xctoolchain/usr/lib"
  ].freeze
  LIBCLANG_FILES = ["libclang.so", "libclang.so.*", "libclang-*.so*", "libclang.dylib"].freeze

  module_function

  def missing_prerequisites(cargo: "cargo", env: ENV)
    missing = []
    missing << "cargo (a current stable Rust toolchain: https://rustup.rs)" unless runs?(cargo, "--version")
    compiler = RbConfig::CONFIG["CC"].to_s.split.first || "cc"
    missing << "a C compiler (Debian/Ubuntu: apt-get install build-essential)" unless runs?(compiler, "--version")
    missing << "pkg-config (Debian/Ubuntu: apt-get install pkg-config)" unless runs?("pkg-config", "--version")
    if runs?("pkg-config", "--version") && !runs?("pkg-config", "--exists", "openssl")
      missing << "OpenSSL headers (Debian/Ubuntu: apt-get install libssl-dev; macOS: brew install openssl)"
    end
    missing << libclang_hint(env) unless libclang(env)
    missing
  end

  # The libclang library bindgen would load, or nil.
  def libclang(env = ENV)
    dirs = if env["LIBCLANG_PATH"] && !env["LIBCLANG_PATH"].empty?
             [env["LIBCLANG_PATH"]]
           else
             [llvm_libdir, *LIBCLANG_DIRS].compact
           end
    dirs.each do |pattern|
      Dir.glob(pattern).each do |dir|
        return dir if File.file?(dir) && File.basename(dir).start_with?("libclang")

        found = LIBCLANG_FILES.lazy.flat_map { |f| Dir.glob(File.join(dir, f)) }.first
        return found if found
      end
    end
    nil
  end

  def libclang_hint(env)
    where = env["LIBCLANG_PATH"] && !env["LIBCLANG_PATH"].empty? ? " (LIBCLANG_PATH=#{env['LIBCLANG_PATH']} has none)" : ""
    "libclang#{where} (Debian/Ubuntu: apt-get install libclang-dev; Fedora: dnf install clang-devel; " \
      "macOS: xcode-select --install; or set LIBCLANG_PATH to the directory holding it)"
  end

  def llvm_libdir
    out = IO.popen(%w[llvm-config --libdir], err: File::NULL, &:read)
    out.strip unless out.to_s.strip.empty?
  rescue SystemCallError
    nil
  end

  def runs?(*command)
    system(*command, out: File::NULL, err: File::NULL) || false
  rescue SystemCallError
    false
  end
end
