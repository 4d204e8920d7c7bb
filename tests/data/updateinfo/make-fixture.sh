#!/usr/bin/env bash
# Rebuilds this fixture (see README.md). Needs: rpmbuild, createrepo_c, modifyrepo_c (createrepo-c),
# python3-createrepo-c (Debian: the createrepo_c Python binding, used only to write updateinfo.xml
# exactly as createrepo_c's own writer does), xz, bzip2, zstd. Run from this directory; revisions
# and timestamps in repomd.xml (and so the checksum-named files) change from run to run.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"
mkdir -p top/{SOURCES,SPECS,BUILD,RPMS,SRPMS,BUILDROOT,tmp} repo/Packages
mk() { # name version release arch
  cat > "top/SPECS/$1-$2-$3.spec" <<SPEC
%define __os_install_post %{nil}
%define __spec_install_post %{nil}
%define debug_package %{nil}
%define _build_id_links none
%define use_source_date_epoch_as_buildtime 1
%define clamp_mtime_to_source_date_epoch 1
%define source_date_epoch_from_changelog 0
%define _buildhost lanmirror-test
Name: $1
Version: $2
Release: $3
Summary: tiny test package $1
License: MIT
$([ "$4" = noarch ] && echo "BuildArch: noarch")
AutoReqProv: no
%description
Tiny test package $1 for lanmirror updateinfo fixtures.
%install
mkdir -p %{buildroot}/usr/share/$1
echo $1-$2-$3 > %{buildroot}/usr/share/$1/README
%files
/usr/share/$1/README
SPEC
  SOURCE_DATE_EPOCH=1700000000 LC_ALL=C rpmbuild --define "_topdir $PWD/top" \
    --define "_tmppath $PWD/top/tmp" -bb "top/SPECS/$1-$2-$3.spec" >/dev/null 2>&1
}
mk lm-alpha 1.0 1 noarch; mk lm-alpha 1.1 1 noarch
mk lm-beta 1.0 1 noarch;  mk lm-beta 1.0 2 noarch
mk lm-gamma 2.0 1 x86_64; mk lm-gamma 2.0 2 x86_64
find top/RPMS -name '*.rpm' -exec cp {} repo/Packages/ \;
createrepo_c --no-database repo >/dev/null
/usr/bin/python3 "$HERE/mkui.py"          # writes ./updateinfo.xml
for t in xz bz2; do
  cp -r repo "repo-$t"
  LC_ALL=C modifyrepo_c --compress-type=$t --simple-md-filenames updateinfo.xml "repo-$t/repodata" >/dev/null
done
LC_ALL=C modifyrepo_c updateinfo.xml repo/repodata >/dev/null   # gz, checksum-named (the default)
rm -rf "$HERE/repodata"
cp -r repo/repodata "$HERE/repodata"
cp updateinfo.xml "$HERE/updateinfo.xml"
cp repo-xz/repodata/updateinfo.xml.xz repo-bz2/repodata/updateinfo.xml.bz2 "$HERE/"
zstd -q -f -19 updateinfo.xml -o "$HERE/updateinfo.xml.zst"
(cd repo/Packages && sha256sum ./*.rpm && ls -l ./*.rpm)
