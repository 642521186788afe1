#!/usr/bin/env bash
# The report tests drive a real headless Chromium (tests/browser.py). This uses the Chromium (or Chrome) and
# chromedriver that are already there: $IMGCLF_CHROMIUM / $IMGCLF_CHROMEDRIVER, else the usual names on PATH.
# It changes the system only when neither is found: then it installs Debian's chromium + chromium-driver
# (apt-get update + install, as root or with sudo without a password) and says so on stderr. When only one
# of the two is there it installs nothing (Debian's chromium-driver would upgrade the installed browser to
# its own version): it says what is missing and how to add it, and fails, so the test command stops here
# rather than at the browser tests.
set -u
BROWSERS="chromium chromium-browser google-chrome google-chrome-stable chrome"
DRIVERS="chromedriver chromium.chromedriver"
# where distributions put a driver that is not on PATH (then only $IMGCLF_CHROMEDRIVER finds it)
DRIVER_PLACES="/usr/lib/chromium/chromedriver /usr/lib/chromium-browser/chromedriver /snap/bin/chromium.chromedriver"

first_on_path() { for n in "$@"; do p=$(command -v "$n" 2>/dev/null) && { echo "$p"; return 0; }; done; return 1; }

browser=${IMGCLF_CHROMIUM:-$(first_on_path $BROWSERS)}
driver=${IMGCLF_CHROMEDRIVER:-$(first_on_path $DRIVERS)}
if [ -n "$browser" ] && [ -n "$driver" ]; then
  exit 0
fi

if [ -n "$browser" ] || [ -n "$driver" ]; then
  if [ -z "$driver" ]; then
    hint=""
    for p in $DRIVER_PLACES; do [ -x "$p" ] && hint="$hint; found $p: export IMGCLF_CHROMEDRIVER=$p"; done
    version=$("$browser" --version 2>/dev/null | head -1)
    echo "error: the report tests need chromedriver: $browser (${version:-version unknown}) is installed but no" \
         "chromedriver was found (PATH: $DRIVERS)$hint. Nothing was installed: Debian's chromium-driver would" \
         "also upgrade the browser. Install the chromedriver matching that browser, or set IMGCLF_CHROMEDRIVER" \
         "(and IMGCLF_CHROMIUM) to a matching pair" >&2
  else
    echo "error: the report tests need a Chromium or Chrome browser: $driver is installed but none of" \
         "$BROWSERS is on PATH. Nothing was installed; install the browser that matches that chromedriver, or" \
         "set IMGCLF_CHROMIUM (and IMGCLF_CHROMEDRIVER) to a matching pair" >&2
  fi
  exit 1
fi

if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
  if [ "$SUDO" != none ]; then
    echo "no Chromium and no chromedriver found: installing Debian's chromium and chromium-driver for the" \
         "report tests (apt-get update, then apt-get install; this changes the system)" >&2
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
      >/dev/null && exit 0
  fi
fi
echo "error: the report tests need Chromium and chromedriver: on Debian/Ubuntu run" \
     "'sudo apt-get install -y chromium chromium-driver'; elsewhere set IMGCLF_CHROMIUM and IMGCLF_CHROMEDRIVER" \
     "to a Chromium/Chrome and its matching chromedriver" >&2
exit 1
