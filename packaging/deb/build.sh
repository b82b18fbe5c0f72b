#!/bin/bash
# Build dist/firezone-gw_<version>_amd64.deb with dpkg-deb: a virtual environment of Debian's
# python3 under /opt/firezone-gw holding `pip install .` of this tree (with the native
# extension when the build makes one), the unit, sysusers.d and tmpfiles.d entries, and
# /etc/firezone-gw/gateway.toml as a conffile. Run from the repository root (make deb).
# Python packages come from PyPI through pip at build time; the .deb needs none at install.
set -euo pipefail

PYTHON=/usr/bin/python3   # Debian's: the venv links to it, so the target needs the same one
PREFIX=/opt/firezone-gw
HERE=packaging/deb
OUT=${OUT:-dist}
WORK=${WORK:-build/deb}

version=$($PYTHON -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
stage=$(realpath -m "$WORK/root")  # absolute, as the venv writes it into scripts
rm -rf "$stage"
mkdir -p "$stage$PREFIX" "$OUT"

# The environment, built where it is staged, then moved to its real prefix in the paths
# that name it. No byte code in the package: postinst compiles it in place.
$PYTHON -m venv "$stage$PREFIX"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
"$stage$PREFIX/bin/pip" install -q --no-compile .
"$stage$PREFIX/bin/pip" uninstall -q -y pip setuptools 2>/dev/null || true
find "$stage$PREFIX" -name __pycache__ -type d -prune -exec rm -rf {} +
find "$stage$PREFIX" -name direct_url.json -delete  # names the build's checkout
# Only the gateway's command and the interpreter stay in bin/ (the libraries' own tools,
# e.g. pyroute2's, are not what this package offers).
find "$stage$PREFIX/bin" -mindepth 1 ! -name firezone-gw ! -name 'python*' -delete
find "$stage$PREFIX" -name '*.so' -exec strip --strip-unneeded --remove-section=.comment \
    --remove-section=.note {} +
grep -rlI --null "$stage$PREFIX" "$stage$PREFIX" | xargs -0 -r sed -i "s#$stage$PREFIX#$PREFIX#g"
if grep -rqI "$stage" "$stage$PREFIX"; then
    echo "build.sh: the staging path is left in the environment:" >&2
    grep -rlI "$stage" "$stage$PREFIX" >&2
    exit 1
fi

install -D -m 0644 systemd/firezone-gw.service "$stage/lib/systemd/system/firezone-gw.service"
install -D -m 0644 systemd/firezone-gw.sysusers "$stage/usr/lib/sysusers.d/firezone-gw.conf"
install -D -m 0644 systemd/firezone-gw.tmpfiles "$stage/usr/lib/tmpfiles.d/firezone-gw.conf"
install -D -m 0640 config/gateway.toml "$stage/etc/firezone-gw/gateway.toml"
chmod 0750 "$stage/etc/firezone-gw"
mkdir -p "$stage/usr/bin"
ln -s "$PREFIX/bin/firezone-gw" "$stage/usr/bin/firezone-gw"
doc="$stage/usr/share/doc/firezone-gw"
install -D -m 0644 "$HERE/copyright" "$doc/copyright"
when=$(git log -1 --format=%cD 2>/dev/null || date -R)
sed -e "s/@VERSION@/$version/" -e "s/@DATE@/$when/" "$HERE/changelog.in" | gzip -9n > "$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"
install -D -m 0644 "$HERE/lintian-overrides" "$stage/usr/share/lintian/overrides/firezone-gw"

mkdir -p "$stage/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" "$HERE/control.in" > "$stage/DEBIAN/control"
install -m 0644 "$HERE/conffiles" "$stage/DEBIAN/conffiles"
install -m 0755 "$HERE/postinst" "$HERE/prerm" "$HERE/postrm" "$stage/DEBIAN/"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
    | xargs -0 md5sum > DEBIAN/md5sums)
chmod 0644 "$stage/DEBIAN/md5sums"

deb="$OUT/firezone-gw_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
