#!/bin/sh
# lanmirror: sets this machine's dnf up to use the site's lanmirror nodes.
# Made by the node at @NODE@. Run it as root, in one command:
#
#   curl -fsS @NODE@/setup/client.sh | sudo sh
#
# It adds the node's .repo file for this system (AlmaLinux @MAJORS@; EPEL too when the
# system has EPEL set up, or with --epel) and disables the stock repos those replace:
# enabled=0 in their own files, each file's original kept once as FILE.lanmirror-orig. A
# stock repo that was enabled (crb, say) is enabled in the node's file, and one that was off
# stays off. Run it again at any time: it fetches the node's files afresh.
#
#   curl -fsS @NODE@/setup/client.sh | sudo sh -s -- --epel   also use EPEL
#   curl -fsS @NODE@/setup/client.sh | sudo sh -s -- --undo   back to the stock repos
#
# LANMIRROR_ROOT=DIR works on DIR/etc/yum.repos.d and DIR/etc/os-release instead of this
# system's (an image being built, a test); LANMIRROR_REPOSDIR=DIR names the repo directory
# itself; LANMIRROR_RELEASE=N takes the release from there instead of os-release.
set -eu
umask 022

node='@NODE@'
offers='@OFFERS@'
mark='@MARK@'
prefix='@PREFIX@'
root=${LANMIRROR_ROOT:-}
reposdir=${LANMIRROR_REPOSDIR:-$root/etc/yum.repos.d}

say() { printf 'lanmirror: %s\n' "$*"; }
die() {
    printf 'lanmirror: %s\n' "$*" >&2
    exit 1
}

undo=no
epel=auto
for arg in "$@"; do
    case $arg in
    --undo) undo=yes ;;
    --epel) epel=yes ;;
    --no-epel) epel=no ;;
    *) die "unknown option: $arg (known: --epel, --no-epel, --undo)" ;;
    esac
done

[ -d "$reposdir" ] || die "there is no repo directory $reposdir"
[ -w "$reposdir" ] || die "cannot write to $reposdir: run this as root (... | sudo sh)"

# ours FILE: FILE was made by a lanmirror node.
ours() {
    head -n 1 "$1" 2>/dev/null | grep -q "^$mark"
}

# ini MODE IDS FILE, on a .repo file:
#   scan: print "ID 1" or "ID 0" for each section named in IDS (whether it is enabled);
#   off:  print FILE with those sections set to enabled=0;
#   set:  print FILE with each section $prefix-ID set as IDS says ("ID=1 ID=0 ...").
ini() {
    awk -v mode="$1" -v ids="$2" -v prefix="$prefix" '
        function on(v) {
            v = tolower(v)
            return v == "1" || v == "yes" || v == "true" || v == "on"
        }
        function close_section() {
            if (cur != "" && (cur in want) && !had) {
                if (mode == "scan") print cur, 1
                else if (mode == "off") print "enabled=0"
                else print "enabled=" want[cur]
            }
        }
        BEGIN {
            n = split(ids, a, " ")
            for (i = 1; i <= n; i++) {
                if (mode == "set") {
                    split(a[i], kv, "=")
                    want[prefix kv[1]] = kv[2]
                } else {
                    want[a[i]] = 1
                }
            }
        }
        /^[ \t]*\[[^]]*\][ \t\r]*$/ {
            close_section()
            cur = $0
            sub(/^[ \t]*\[/, "", cur)
            sub(/\][ \t\r]*$/, "", cur)
            had = 0
            if (mode != "scan") print
            next
        }
        (cur in want) && /^[ \t]*enabled[ \t]*=/ {
            had = 1
            v = $0
            sub(/^[^=]*=[ \t]*/, "", v)
            sub(/[ \t\r]*$/, "", v)
            if (mode == "scan") print cur, (on(v) ? 1 : 0)
            else if (mode == "off") print "enabled=0"
            else print "enabled=" want[cur]
            next
        }
        { if (mode != "scan") print }
        END { close_section() }
    ' "$3"
}

if [ "$undo" = yes ]; then
    for f in "$reposdir"/*.repo; do
        if [ -f "$f" ] && ours "$f"; then
            rm -f "$f"
            say "removed $f"
        fi
    done
    for f in "$reposdir"/*.repo.lanmirror-orig; do
        if [ -f "$f" ]; then
            cat "$f" >"${f%.lanmirror-orig}"
            rm -f "$f"
            say "restored ${f%.lanmirror-orig}"
        fi
    done
    say "done: dnf uses the stock repos again"
    exit 0
fi

# The release: LANMIRROR_RELEASE, else os-release (an AlmaLinux system only).
if [ -n "${LANMIRROR_RELEASE:-}" ]; then
    major=$LANMIRROR_RELEASE
else
    osr=$root/etc/os-release
    [ -r "$osr" ] || osr=$root/usr/lib/os-release
    [ -r "$osr" ] || die "cannot read $osr to tell the release (set LANMIRROR_RELEASE)"
    field() { sed -n "s/^$1=//p" "$osr" | head -n 1 | tr -d "\"'"; }
    id=$(field ID)
    ver=$(field VERSION_ID)
    [ "$id" = almalinux ] || die "the node sets up AlmaLinux clients; this system is '$id' (LANMIRROR_RELEASE=N uses the node's AlmaLinux N repos anyway)"
    major=${ver%%.*}
fi
case $major in
'' | *[!0-9]*) die "cannot tell the release from '$major'" ;;
esac
case " $offers " in
*" almalinux-$major "*) ;;
*) die "the node offers no AlmaLinux $major repos (it offers: $offers)" ;;
esac

want="almalinux-$major"
if [ "$epel" != no ]; then
    case " $offers " in
    *" epel-$major "*)
        if [ "$epel" = yes ] || grep -qs '^[[:space:]]*\[epel\][[:space:]]*$' "$reposdir"/*.repo; then
            want="$want epel-$major"
        fi
        ;;
    *) [ "$epel" = auto ] || die "the node offers no EPEL $major repo" ;;
    esac
fi

fetch() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS --max-time 60 -o "$2" "$1"
    elif command -v wget >/dev/null 2>&1; then
        wget -q -T 60 -O "$2" "$1"
    else
        die "neither curl nor wget is installed"
    fi
}

tmp=$reposdir/.lanmirror-$$
trap 'rm -f "$tmp.repo" "$tmp.new"' EXIT
trap 'exit 1' HUP INT TERM

# ID=0|1 of every stock repo the node's files replace, as it was before lanmirror.
states=''
for name in $want; do
    fetch "$node/setup/$name.repo" "$tmp.repo" || die "could not fetch $node/setup/$name.repo"
    ours "$tmp.repo" || die "$node/setup/$name.repo is not a .repo file made by lanmirror"
    ids=$(sed -n "s/^\[$prefix\(.*\)\][[:space:]]*\$/\1/p" "$tmp.repo" | tr '\n' ' ')
    [ -n "$ids" ] || die "$node/setup/$name.repo names no repo"
    changed=''
    for f in "$reposdir"/*.repo; do
        if [ ! -f "$f" ] || ours "$f"; then
            continue
        fi
        orig=$f.lanmirror-orig
        src=$f
        if [ -f "$orig" ]; then
            src=$orig
        fi
        found=$(ini scan "$ids" "$src")
        if [ -z "$found" ]; then
            continue
        fi
        states="$states $(printf '%s\n' "$found" | tr ' ' '=' | tr '\n' ' ')"
        if ini scan "$ids" "$f" | grep -q ' 1$'; then
            if [ ! -f "$orig" ]; then
                cp -p "$f" "$orig"
            fi
            ini off "$ids" "$f" >"$tmp.new"
            # Rewritten in place: the file keeps its owner, mode and SELinux label.
            cat "$tmp.new" >"$f"
            changed="$changed ${f##*/}"
        fi
    done
    ini set "$states" "$tmp.repo" >"$tmp.new"
    chmod 644 "$tmp.new"
    dest=$reposdir/$name.repo
    # A file of that name that is not the node's is kept like a stock one (--undo restores it).
    if [ -f "$dest" ] && ! ours "$dest" && [ ! -f "$dest.lanmirror-orig" ]; then
        cp -p "$dest" "$dest.lanmirror-orig"
    fi
    mv -f "$tmp.new" "$dest"
    mine=''
    for i in $ids; do
        mine="$mine $prefix$i"
    done
    on=$(ini scan "$mine" "$dest" | sed -n 's/ 1$//p' | tr '\n' ' ')
    say "added $dest (enabled: ${on% })"
    if [ -n "$changed" ]; then
        say "disabled the stock repos it replaces in:$changed"
    fi
done
say "done: dnf now installs through the site's lanmirror nodes (check with: dnf repolist)"
