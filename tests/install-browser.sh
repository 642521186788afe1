#!/usr/bin/env bash
# The report tests drive a real headless Chromium (tests/browser.py). This finds one, or installs
# Debian's chromium + chromium-driver when it can (root, or sudo without a password); otherwise it says
# how and fails, so the test command stops here rather than at the browser tests.
set -u
have() { command -v "$1" >/dev/null 2>&1; }
if { [ -n "${IMGCLF_CHROMIUM:-}" ] && [ -n "${IMGCLF_CHROMEDRIVER:-}" ]; } || \
   { { have chromium || have chromium-browser || have google-chrome; } && have chromedriver; }; then
  exit 0
fi
if have apt-get; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif have sudo && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
  if [ "$SUDO" != none ]; then
    echo "installing chromium and chromium-driver for the report tests (apt-get)" >&2
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
      >/dev/null && exit 0
  fi
fi
echo "error: the report tests need Chromium and chromedriver: on Debian/Ubuntu run" \
     "'sudo apt-get install -y chromium chromium-driver'; elsewhere set IMGCLF_CHROMIUM and IMGCLF_CHROMEDRIVER" \
     "to a Chromium/Chrome and its matching chromedriver" >&2
exit 1
