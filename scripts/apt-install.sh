# Sourced by the ensure-*.sh scripts: apt_install WHAT PACKAGE... installs Debian packages with apt-get,
# as root or through sudo, refreshing the package lists only when the cached ones lack the first package.
# WHAT names what is missing in the error printed when neither root nor sudo is available.

apt_install() {
  local what=$1
  shift
  local sudo=()
  if [[ "$(id -u)" -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "error: $what is missing, this is not root and sudo is not available; install the Debian package(s): $*" >&2
      return 1
    fi
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache show "$1" >/dev/null 2>&1; then
    "${sudo[@]}" apt-get update -q
  fi
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@" >/dev/null
}
