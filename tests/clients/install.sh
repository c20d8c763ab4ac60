#!/usr/bin/env bash
# Installs the real AWS clients and the system tools the test suite drives, only what is missing:
#   - tests/clients/node_modules from package-lock.json (npm ci) when absent or stale;
#   - Debian packages when missing, as root or through passwordless sudo: `awscli`
#     (AWS CLI v2, /usr/bin/aws), `systemd` (systemd-analyze, systemd-socket-activate),
#     `util-linux` (unshare, nsenter), `iproute2` (ip), `nftables` (nft), `zsh` and `fish`,
#     and for tests/test_more_clients.py `golang-go` with the AWS SDK for Go v1 and v2 sources
#     (`golang-github-aws-aws-sdk-go-dev`, `golang-github-aws-aws-sdk-go-v2-dev`; the test
#     builds tests/clients/go-v1 and go-v2 against them offline) and `rclone`.
# boto3, aiobotocore and the pip AWS CLI v1 come from the project's `test` extra, not from here.
#
# Idempotent: a second run does nothing and says so. Without CI a client that cannot be
# installed is reported and its tests skip; with CI set (to anything but empty, 0, false or
# no, the rule tests/support/clients.py applies too) every problem fails this script.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
problems=0

say() { printf 'clients/install.sh: %s\n' "$*"; }

problem() {
    say "PROBLEM: $*"
    problems=$((problems + 1))
}

# Exit 0 when every package pinned in package-lock.json is installed at its locked version.
# npm's own hidden lockfile is not enough: it survives a hand-edited lock or a partial copy.
node_modules_match_lock() {
    [[ -d "$here/node_modules" ]] || return 1
    (cd "$here" && node --input-type=commonjs -e '
        const fs = require("fs");
        const lock = JSON.parse(fs.readFileSync("package-lock.json", "utf8"));
        const stale = [];
        for (const [path, meta] of Object.entries(lock.packages || {})) {
            if (!path || meta.link || !meta.version) continue;
            let installed = null;
            try {
                installed = JSON.parse(fs.readFileSync(path + "/package.json", "utf8")).version;
            } catch (e) {
                if (meta.optional) continue;  // platform-specific optional packages may be absent
            }
            if (installed !== meta.version) stale.push(`${path} (${installed} != ${meta.version})`);
        }
        if (stale.length) {
            console.error(`stale: ${stale.slice(0, 5).join(", ")}${stale.length > 5 ? ", ..." : ""}`);
            process.exit(1);
        }
    ')
}

install_node_clients() {
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        problem "node/npm not found: the JS SDK v2/v3 and Serverless tests will skip (install Node.js >= 18)"
        return
    fi
    if node_modules_match_lock; then
        say "node_modules up to date with package-lock.json ($(node --version)); nothing to do"
        return
    fi
    say "running npm ci in $here"
    if (cd "$here" && npm ci --no-audit --no-fund --loglevel=error); then
        say "npm ci done"
    else
        problem "npm ci failed in $here"
    fi
}

as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 127
    fi
}

# ensure_debian_package PATH PACKAGE PURPOSE: install PACKAGE when PATH (a program, or a
# directory of Go sources) is missing.
ensure_debian_package() {
    local binary="$1" package="$2" purpose="$3"
    if [[ -x "$binary" ]]; then
        say "$purpose present: $binary"
        return
    fi
    if ! command -v apt-get >/dev/null; then
        problem "$binary missing and no apt-get: the $purpose tests will skip"
        return
    fi
    if ! as_root true; then
        problem "$binary missing and not root (no passwordless sudo): run 'sudo apt-get install $package'"
        return
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
        say "apt package lists are empty: running apt-get update"
        as_root apt-get update -q || { problem "apt-get update failed"; return; }
    fi
    say "installing the Debian $package package ($purpose)"
    if ! as_root apt-get install -y -q --no-install-recommends "$package"; then
        say "apt-get install failed; refreshing the package lists once and retrying"
        as_root apt-get update -q && as_root apt-get install -y -q --no-install-recommends "$package" \
            || { problem "apt-get install $package failed"; return; }
    fi
    if [[ -x "$binary" ]]; then
        say "installed $package: $binary"
    else
        problem "the $package package installed no $binary"
    fi
}

install_node_clients
ensure_debian_package /usr/bin/aws awscli "AWS CLI v2"
# systemd-analyze and systemd-socket-activate for the unit and socket-activation tests,
# unshare for the Serverless and container namespace tests, zsh and fish for the shell set-up tests.
ensure_debian_package /usr/bin/systemd-socket-activate systemd "systemd tools"
ensure_debian_package /usr/bin/unshare util-linux "unshare"
# ip and nft for the container set-up tests (bridges, veths and rules in private namespaces).
ensure_debian_package /sbin/ip iproute2 "iproute2"
ensure_debian_package /usr/sbin/nft nftables "nftables"
ensure_debian_package /usr/bin/zsh zsh "zsh"
ensure_debian_package /usr/bin/fish fish "fish"
# Go 1.19 and the Go SDKs as Debian bookworm ships them (v1 1.44, v2 1.17), and rclone 1.60 (on
# Go SDK v1): about 120 MB to download, 1 GB unpacked (mostly the SDK sources), no network to build.
ensure_debian_package /usr/bin/go golang-go "Go"
ensure_debian_package /usr/share/gocode/src/github.com/aws/aws-sdk-go/service/sts \
    golang-github-aws-aws-sdk-go-dev "AWS SDK for Go v1"
ensure_debian_package /usr/share/gocode/src/github.com/aws/aws-sdk-go-v2/service/sts \
    golang-github-aws-aws-sdk-go-v2-dev "AWS SDK for Go v2"
ensure_debian_package /usr/bin/rclone rclone "rclone"

ci="${CI:-}"
ci="${ci,,}"
if ((problems)); then
    if [[ -n "$ci" && "$ci" != 0 && "$ci" != false && "$ci" != no ]]; then
        say "$problems problem(s) and CI is set: failing (CI must run every client test)"
        exit 1
    fi
    say "$problems problem(s): the affected tests will skip with the reason above"
fi
exit 0
