#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Install asynctrace into an interpreter's site-packages, enabled at startup via
# asynctrace.pth ("import asynctrace._autoload"), or remove it again.
# usage: install.sh PYTHON [BUILD_DIR]        install (BUILD_DIR defaults to ../../build)
#        install.sh --uninstall PYTHON        remove
set -eu
usage="usage: install.sh [--uninstall] PYTHON [BUILD_DIR]"
case "${1:-}" in
-h | --help)
	echo "$usage"
	echo "Install asynctrace into PYTHON's site-packages, enabled at startup (asynctrace.pth),"
	echo "from BUILD_DIR (default: the source tree's build/); --uninstall removes it."
	echo "Exit 0 on success, 1 if the build for PYTHON is missing, 2 on bad arguments."
	exit 0
	;;
esac
uninstall=0
if [ "${1:-}" = "--uninstall" ]; then uninstall=1; shift; fi
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
py=$1
case "$py" in
-*) echo "install.sh: unknown option '$py' ($usage)" >&2; exit 2 ;;
esac
# An interpreter, not whatever the word names: it is run below.
command -v "$py" >/dev/null 2>&1 && [ -x "$(command -v "$py")" ] && [ ! -d "$(command -v "$py")" ] ||
	{ echo "install.sh: '$py' is not an executable Python interpreter ($usage)" >&2; exit 2; }
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
