#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Install asynctrace into an interpreter's site-packages, enabled at startup via
# asynctrace.pth ("import asynctrace._autoload"), or remove it again.
# usage: install.sh PYTHON [BUILD_DIR]        install (BUILD_DIR defaults to ../../build)
#        install.sh --uninstall PYTHON        remove
set -eu
uninstall=0
if [ "${1:-}" = "--uninstall" ]; then uninstall=1; shift; fi
py=${1:?usage: install.sh [--uninstall] PYTHON [BUILD_DIR]}
here=$(cd "$(dirname "$0")" && pwd)
build=${2:-$here/../../build}
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
tag=$("$py" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
if [ $uninstall = 1 ]; then
	rm -rf "$site/asynctrace" "$site/asynctrace.pth"
	echo "removed asynctrace from $site"
	exit 0
fi
src=$build/python/$tag/asynctrace
[ -d "$src" ] || { echo "no build for $tag in $build/python (build target asynctrace_python_$tag)" >&2; exit 1; }
mkdir -p "$site/asynctrace"
cp "$src"/*.py "$src"/_asynctrace*.so "$site/asynctrace/"
echo "import asynctrace._autoload" > "$site/asynctrace.pth"
echo "installed asynctrace into $site"
