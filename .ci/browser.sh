# Headless Chromium and its WebDriver from Debian's packages, for the dashboard's browser
# tests (tests/agent/server/test_dashboard.py, driven by Selenium with
# /usr/bin/chromium and /usr/bin/chromedriver). The browser comes from apt, never from a
# download at run time.
#
# Sourced by .ci/run (set -euo pipefail, as root, no stdin). Idempotent.
# By hand:  source .ci/browser.sh && python -m pytest -q tests/agent/server/test_dashboard.py

_cllm_browser() {
    if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
        return 0
    fi
    echo "browser.sh: installing chromium and chromium-driver from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
}
_cllm_browser
