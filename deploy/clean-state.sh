#!/usr/bin/env bash
# Remove the local state under STATE_DIR, except the entries named KEEP: the stack's data,
# logs, pids and secrets, and the workers' own state (the streams worker's table stores,
# demo, supervisor and benchmark logs). Worker state is removed with Kafka's data because a
# fresh Kafka invalidates it. Called by `make clean` after the stack is down.
#
# An entry that is a symlink made by erpcrm (`.local/pg-<system>` pointing at
# `<dir>/pg-<system>-<12 hex digits>`, where the PostgreSQL service user can reach it, see
# erpcrm/stack/process.py) is removed with its target; any other symlink only as a link.
#
# Usage: deploy/clean-state.sh STATE_DIR [KEEP...]
set -euo pipefail

state=${1:?usage: deploy/clean-state.sh STATE_DIR [KEEP...]}
shift
[[ -d $state ]] || exit 0
shopt -s nullglob dotglob

for path in "$state"/*; do
    name=${path##*/}
    for keep in "$@"; do
        [[ $name == "$keep" ]] && continue 2
    done
    if [[ -L $path ]]; then
        target=$(readlink -f -- "$path" || true)
        if [[ -n $target && ${target##*/} =~ ^"$name"-[0-9a-f]{12}$ ]]; then
            rm -rf -- "$target"
        elif [[ -n $target ]]; then
            echo "clean-state: kept $target (linked from $path, not made by erpcrm)" >&2
        fi
    fi
    echo "clean-state: removing $path"
    rm -rf -- "$path"
done
