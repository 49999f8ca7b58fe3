# Shared helpers for the setup scripts (sourced, not run).
say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }
# Drops pip's warnings about configured package locations that do not exist on this machine;
# everything else (errors included) passes through.
quiet_pip() { grep -v -e "is ignored: it is neither a file nor a directory" || true; }
