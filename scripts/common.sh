# Shared helpers for the setup scripts (sourced, not run).
say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }
# Drops pip's warnings about configured package locations that do not exist on this machine;
# everything else (errors included) passes through.
quiet_pip() { grep -v -e "is ignored: it is neither a file nor a directory" || true; }
# The first error in a build log, on one line. pip prints its own "error: subprocess-exited-with-error"
# before the output of the build it ran, so the causes come first: CMake's error (with its more deeply
# indented message lines), then the compiler's or linker's, then patch's; pip's own lines last.
first_build_error() {
  awk '
    function indent(line) { match(line, /^ */); return RLENGTH }
    cmake_at && !cmake && indent($0) >= cmake_at { line = $0; sub(/^ +/, "", line); msg = msg " " line; next }
    cmake_at && !cmake { cmake = msg }
    /CMake Error/ && !cmake_at { cmake_at = indent($0) + 1; msg = $0; sub(/^ +/, "", msg); next }
    !compiler && /(fatal error|error):/ && !/subprocess-exited-with-error|metadata-generation-failed|^ *(error|ERROR): / {
      compiler = $0; sub(/^ +/, "", compiler) }
    !compiler && /undefined reference|ld returned/ { compiler = $0; sub(/^ +/, "", compiler) }
    !other && (/^Hunk #[0-9]+ FAILED|malformed patch|^patch: \*\*\*\*|can.t find file to patch/) { other = $0 }
    !other && /(^|[^a-z])(error|ERROR)[: ]/ { other = $0; sub(/^ +/, "", other) }
    END {
      if (cmake_at && !cmake) cmake = msg
      print (cmake ? cmake : (compiler ? compiler : other))
    }
  ' "$1" 2>/dev/null | cut -c1-400
}
