#!/usr/bin/env bash
# Benchmark of a mounted tree against the raw disk and gocryptfs, in one run:
# fio sequential write and read, and a metadata test (create, stat, unlink N files).
#
#   node/benches/fuse.sh            # 1 GiB, 10 000 files, 3 rounds (needs root and /dev/fuse)
#   SIZE=256M FILES=2000 ROUNDS=1 node/benches/fuse.sh
#
# Installs fio and gocryptfs with apt-get when missing, builds btnode in release mode,
# starts one node (R = 1) with a fresh tree in a temporary directory, mounts it, and
# prints a markdown table of MiB/s and seconds with ratios to the raw disk and to
# gocryptfs. A second gocryptfs, made with `-xchacha`, encrypts with XChaCha20-Poly1305
# as we do (gocryptfs's default is AES-GCM, several times faster where the CPU has AES
# instructions): the comparison with it shows what is the cipher's. Each round measures the three places one after the other, and the table
# shows each measurement's median over the rounds: on the 2-core VMs of the project, one
# round's read ratio ranged from 0.4 to 1.0 within an hour. Each round's ratios to
# gocryptfs are printed under the table.
set -euo pipefail
cd "$(dirname "$0")/../.."

SIZE=${SIZE:-1G}
FILES=${FILES:-10000}
ROUNDS=${ROUNDS:-3}

need=()
command -v fio >/dev/null || need+=(fio)
command -v gocryptfs >/dev/null || need+=(gocryptfs)
command -v fusermount3 >/dev/null || need+=(fuse3)
if [ ${#need[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
cargo build --release -q -p btnode
btnode=$PWD/target/release/btnode

work=$(mktemp -d /var/tmp/btbench.XXXXXX)
cleanup() {
  status=$?
  set +e
  if [ "$status" -ne 0 ] && [ -f "$work/node.log" ]; then
    echo "the benchmark failed; the node's log ends:" >&2
    tail -n 30 "$work/node.log" >&2
  fi
  fusermount3 -u "$work/gocrypt" 2>/dev/null
  fusermount3 -u "$work/xchacha" 2>/dev/null
  [ -n "${node_pid:-}" ] && "$btnode" --data-dir "$work/node" umount "$work/mnt" >/dev/null 2>&1
  [ -n "${node_pid:-}" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# The three places, on the same file system.
mkdir -p "$work/raw" "$work/gocrypt.cipher" "$work/gocrypt" "$work/xchacha.cipher" "$work/xchacha" "$work/mnt"
echo bench-passphrase > "$work/pass"
gocryptfs -q -init -passfile "$work/pass" "$work/gocrypt.cipher" >/dev/null
gocryptfs -q -passfile "$work/pass" "$work/gocrypt.cipher" "$work/gocrypt"
gocryptfs -q -init -xchacha -passfile "$work/pass" "$work/xchacha.cipher" >/dev/null
gocryptfs -q -passfile "$work/pass" "$work/xchacha.cipher" "$work/xchacha"
export BT_PASSPHRASE=bench
root=$("$btnode" --data-dir "$work/node" init --key-store software --root --json |
  sed -n 's/.*"root": *"\([^"]*\)".*/\1/p')
BT_FS_REPLICAS=1 BT_FS_WRITE_QUORUM=1 RUST_LOG=warn \
  "$btnode" --data-dir "$work/node" run --listen /ip4/127.0.0.1/tcp/0 >"$work/node.log" 2>&1 &
node_pid=$!
for _ in $(seq 1 100); do [ -S "$work/node/control.sock" ] && break; sleep 0.1; done
"$btnode" --data-dir "$work/node" mount "/$root" "$work/mnt" >/dev/null

fio_mibs() { # dir rw → MiB/s
  fio --name=seq --directory="$1" --rw="$2" --bs=1M --size="$SIZE" --numjobs=1 \
    --ioengine=psync --end_fsync=1 --output-format=terse --terse-version=3 2>/dev/null |
    awk -F';' -v rw="$2" '{ kb = (rw == "write") ? $48 : $7; printf "%.1f", kb / 1024 }'
}

metadata() { # dir → "create stat unlink" seconds
  python3 - "$1" "$FILES" <<'EOF'
import os, sys, time
d, n = os.path.join(sys.argv[1], "meta"), int(sys.argv[2])
os.mkdir(d)
t = time.monotonic()
for i in range(n):
    with open(os.path.join(d, f"f{i}"), "w"):
        pass
create = time.monotonic() - t
t = time.monotonic()
for i in range(n):
    os.stat(os.path.join(d, f"f{i}"))
stat = time.monotonic() - t
t = time.monotonic()
for i in range(n):
    os.unlink(os.path.join(d, f"f{i}"))
unlink = time.monotonic() - t
os.rmdir(d)
print(f"{create:.3f} {stat:.3f} {unlink:.3f}")
EOF
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "–" }'; }

# Every measurement of every round, by place: "write read create stat unlink" per line.
declare -A all
rounds_seen=""
for round in $(seq 1 "$ROUNDS"); do
  for place in raw gocrypt xchacha mnt; do
    wr=$(fio_mibs "$work/$place" write)
    rd=$(fio_mibs "$work/$place" read)
    rm -f "$work/$place"/seq.*
    all[$place]+="$wr $rd $(metadata "$work/$place")"$'\n'
  done
  this() { echo "${all[$1]}" | sed -n "${round}p" | cut -d' ' -f"$2"; }
  rounds_seen+="round $round, mount / gocryptfs: write $(ratio "$(this mnt 1)" "$(this gocrypt 1)"), read $(ratio "$(this mnt 2)" "$(this gocrypt 2)"), create $(ratio "$(this mnt 3)" "$(this gocrypt 3)"), stat $(ratio "$(this mnt 4)" "$(this gocrypt 4)"), unlink $(ratio "$(this mnt 5)" "$(this gocrypt 5)"); read against -xchacha $(ratio "$(this mnt 2)" "$(this xchacha 2)")"$'\n'
done
med() { echo "${all[$1]}" | cut -d' ' -f"$2" | median; }
declare -A w r m
for place in raw gocrypt xchacha mnt; do
  w[$place]=$(med $place 1)
  r[$place]=$(med $place 2)
  m[$place]="$(med $place 3) $(med $place 4) $(med $place 5)"
done
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
echo
echo "$cpu, $(nproc) cores; $SIZE sequential, $FILES files; medians of $ROUNDS rounds"
echo
echo "| | raw disk | gocryptfs | gocryptfs -xchacha | blocktree mount | mount / raw | mount / gocryptfs | mount / gocryptfs -xchacha |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
echo "| fio write MiB/s | ${w[raw]} | ${w[gocrypt]} | ${w[xchacha]} | ${w[mnt]} | $(ratio "${w[mnt]}" "${w[raw]}") | $(ratio "${w[mnt]}" "${w[gocrypt]}") | $(ratio "${w[mnt]}" "${w[xchacha]}") |"
echo "| fio read MiB/s | ${r[raw]} | ${r[gocrypt]} | ${r[xchacha]} | ${r[mnt]} | $(ratio "${r[mnt]}" "${r[raw]}") | $(ratio "${r[mnt]}" "${r[gocrypt]}") | $(ratio "${r[mnt]}" "${r[xchacha]}") |"
for k in 1 2 3; do
  name=$(echo "create stat unlink" | cut -d' ' -f$k)
  a=$(echo "${m[raw]}" | cut -d' ' -f$k); b=$(echo "${m[gocrypt]}" | cut -d' ' -f$k)
  x=$(echo "${m[xchacha]}" | cut -d' ' -f$k); c=$(echo "${m[mnt]}" | cut -d' ' -f$k)
  echo "| $name $FILES files, s (lower is better) | $a | $b | $x | $c | $(ratio "$c" "$a") | $(ratio "$c" "$b") | $(ratio "$c" "$x") |"
done
echo
printf '%s' "$rounds_seen"
