#!/usr/bin/env bash
# Print the newest Python >= 3.12 that actually runs here, else python3.
# pyenv shims for versions that are installed but not selected fail when run, so each is tried.
cands=()
for v in 3.14 3.13 3.12; do cands+=("python$v"); done
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root)
  for v in $(pyenv versions --bare 2>/dev/null | sort -t. -k1,1nr -k2,2nr -k3,3nr); do
    cands+=("$root/versions/$v/bin/python3")
  done
fi
for p in "${cands[@]}"; do
  if out=$("$p" -c 'import sys, venv; print(sys.version_info >= (3, 12))' 2>/dev/null) && [ "$out" = True ]; then
    echo "$p"; exit 0
  fi
done
echo python3
