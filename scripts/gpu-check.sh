#!/usr/bin/env bash
# GPU check of a3d in two steps: build here, run on a lent GPU machine (which has no Rust).
#
#   scripts/gpu-check.sh prepare        # here: nvcc + cargo; fills gpu-check/ (git-ignored)
#   scripts/gpu-check.sh run OUTDIR     # on the GPU machine: bash + python3/PyTorch only
#
# prepare: installs the pinned nvcc (scripts/install-cuda-toolchain.sh), builds the CLI
#   (`a3d-cli`, feature cuda) and the test executables of `a3d` (feature cuda) in release mode,
#   copies them to gpu-check/bin/{a3d,test-<target>}, packed as gpu-check/bin.tar.gz for travel
#   (test-a3d = the library's unit tests; only
#   the targets that run kernels on the GPU: a3d, cuda, fusion, shift, depthconv, torch_parity,
#   boxes, roi_align, detection_parity, batchnorm),
#   strips them, writes gpu-check/build-info.txt, checks the size that travels, and prints the
#   device call to make: carry ["gpu-check"], command `bash scripts/gpu-check.sh run "$OUT"`.
#
# run OUTDIR: every step under `timeout`, the whole run inside GPU_CHECK_BUDGET_S (default 280 s;
#   GPU_CHECK_MEMCHECK_ARGS adds libtest arguments to the memcheck run):
#   nvidia-smi; gpu-check/bin/test-cuda; `a3d bench fusion|tsm|alignshift|depthconv|roi-align|nms
#   --device cuda` (JSON lines); bench/gpu/torch_peer.py (PyTorch einsum peer),
#   bench/torch_context_ops.py (the symmetric operators in PyTorch) and bench/torch_detection.py
#   (torchvision's roi_align and nms); compute-sanitizer memcheck (all of test-cuda)
#   and racecheck (tests named *sanitizer*), memcheck of the op tests and racecheck of the
#   shared-memory kernels (depth conv, batch-norm statistics, NMS mask); the other test-*
#   binaries; then
#   bench/gpu/make_report.py. A failing step is recorded and the run goes on. OUTDIR gets at most
#   5 files (the device tool returns 8): gpu-report.md, summary.json, a3d-bench.jsonl,
#   torch-peer.jsonl, logs.tar.gz (every log and raw output).
#   Exit: 0 all passed; 1 a test or sanitizer check failed (or did not complete); 2 only a
#   benchmark / peer / info step failed. Performance targets missed do not change the exit code.
set -u

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 2

CHECK_DIR=gpu-check
BIN=$CHECK_DIR/bin
SHAPES=(--shape "2,256,7,128,128" --shape "1,128,3,256,256")
DTYPES=f32,bf16
RUNS=30
# The device tool's limit for what travels (working tree + carry).
TRAVEL_LIMIT=$((64 * 1024 * 1024))

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

log() { printf '[gpu-check %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { printf 'gpu-check: %s\n' "$*" >&2; exit 1; }

# ============================================================================ prepare (here)

prepare() {
  set -eo pipefail
  command -v cargo >/dev/null || die "cargo not found (prepare runs on the Rust machine, not the GPU one)"
  command -v python3 >/dev/null || die "python3 not found"
  [ "$(uname -m)" = x86_64 ] || die "this machine is $(uname -m); the GPU machine is x86-64: build there-compatible binaries elsewhere"

  local nvcc
  nvcc=$(scripts/install-cuda-toolchain.sh) || die "scripts/install-cuda-toolchain.sh failed"
  # On PATH rather than in $NVCC: build.rs reruns when NVCC changes, and the other builds of
  # this checkout (which find the same nvcc by its fallbacks) leave NVCC unset.
  PATH="$(dirname "$nvcc"):$PATH"
  export PATH
  log "nvcc: $nvcc ($("$nvcc" --version | grep -o 'release [0-9.]*' || echo '?'))"

  # The CLI must have a `cuda` feature (forwarding to a3d/cuda); say so plainly if it does not.
  local features
  features=$(cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
m = json.load(sys.stdin)
for p in m["packages"]:
    print(p["name"], " ".join(sorted(p["features"])))
')
  if ! grep -Eq '^a3d-cli( .*)? cuda( |$)' <<<"$features"; then
    die "package a3d-cli has no \`cuda\` feature yet (cli/Cargo.toml needs: [features] cuda = [\"a3d/cuda\"]); features seen: $(tr '\n' ';' <<<"$features")"
  fi
  grep -Eq '^a3d( .*)? cuda( |$)' <<<"$features" || die "package a3d has no \`cuda\` feature"

  rm -rf "$BIN" "$CHECK_DIR/bin.tar.gz"
  mkdir -p "$BIN"
  local json=$CHECK_DIR/cargo-messages.jsonl

  log "cargo build --release -p a3d-cli --features cuda"
  cargo build --release -p a3d-cli --features cuda --message-format=json-render-diagnostics >"$json" \
    || die "cargo build of a3d-cli (feature cuda) failed (diagnostics above)"
  log "cargo test --release -p a3d --features cuda --no-run"
  cargo test --release -p a3d --features cuda --no-run --message-format=json-render-diagnostics >>"$json" \
    || die "cargo test --no-run of a3d (feature cuda) failed (diagnostics above)"

  # Executables: the CLI binary `a3d`, and every test-profile artifact of package a3d.
  python3 - "$json" "$BIN" "$CHECK_DIR" <<'PY'
import json, os, re, shutil, sys
src, bindir, checkdir = sys.argv[1:4]
copied, ptxas = {}, []
GPU_TESTS = {"test-a3d", "test-cuda", "test-fusion", "test-shift", "test-depthconv", "test-torch_parity",
             "test-boxes", "test-roi_align", "test-detection_parity", "test-batchnorm"}
for line in open(src):
    line = line.strip()
    if not line.startswith("{"):
        continue
    m = json.loads(line)
    pkg = m.get("package_id", "")
    # "path+file:///…#a3d@0.1.0" (cargo >= 1.77) or "a3d 0.1.0 (path+file:///…)"
    is_a3d = re.search(r"(#|^)a3d[@ ]", pkg) is not None
    if m.get("reason") == "build-script-executed" and is_a3d:
        # One report per kernels/<module>.cu.
        out = m.get("out_dir", "")
        found = sorted(f for f in os.listdir(out) if f.endswith(".ptxas.txt")) if os.path.isdir(out) else []
        if found:
            ptxas = [os.path.join(out, f) for f in found]
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    t = m["target"]
    if m["profile"].get("test"):
        if not is_a3d:
            continue
        name = "test-" + t["name"].replace("-", "_")
        # Only the test binaries that run kernels on the GPU travel (each embeds every fatbin):
        # the library's unit tests, the CUDA runtime tests and the ops' backend loops.
        if name not in GPU_TESTS:
            continue
    elif t["name"] == "a3d" and "bin" in t["kind"]:
        name = "a3d"
    else:
        continue
    dst = os.path.join(bindir, name)
    shutil.copy2(m["executable"], dst)
    copied[name] = m["executable"]
for name, exe in sorted(copied.items()):
    print(f"  {name:<18} <- {exe}")
if "a3d" not in copied:
    sys.exit("gpu-check: the a3d CLI binary was not among cargo's artifacts")
if "test-cuda" not in copied:
    print("gpu-check: WARNING: no tests/cuda.rs test target was built (test-cuda missing)", file=sys.stderr)
if ptxas:
    with open(os.path.join(checkdir, "ptxas.txt"), "w") as out:
        for p in ptxas:
            out.write(f"== {os.path.basename(p)}\n")
            out.write(open(p).read())
    print(f"  ptxas.txt          <- {', '.join(ptxas)}")
PY
  rm -f "$json"

  # Drop test binaries with no test in this build (e.g. tests/candle.rs without its feature);
  # `--list` runs no test, so it works here without a GPU.
  local b n
  for b in "$BIN"/test-*; do
    [ "$(basename "$b")" = test-cuda ] && continue
    n=$("$b" --list 2>/dev/null | grep -c ': test$' || true)
    if [ "${n:-0}" -eq 0 ]; then
      log "$(basename "$b"): no tests in this build, left out"
      rm -f "$b"
    fi
  done

  # Strip debug info (keeps the symbol table: panics on the GPU machine still name functions);
  # strip everything only if that is not small enough.
  strip --strip-debug "$BIN"/*
  if [ "$(du -sb "$CHECK_DIR" | cut -f1)" -gt $((40 * 1024 * 1024)) ]; then
    strip "$BIN"/*
  fi
  chmod 755 "$BIN"/*

  # What the binaries need from the GPU machine's glibc (its image is Ubuntu 24.04: 2.39).
  local glibc needed
  glibc=$(for f in "$BIN"/*; do objdump -T "$f" 2>/dev/null; done | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 || true)
  needed=$(for f in "$BIN"/*; do objdump -p "$f" 2>/dev/null; done | awk '/NEEDED/ { print $2 }' | sort -u | tr '\n' ' ' || true)
  if [ -n "$glibc" ] && [ "$(printf '%s\n' "$glibc" GLIBC_2.39 | sort -V | tail -1)" != GLIBC_2.39 ]; then
    echo "gpu-check: WARNING: the binaries need $glibc; the GPU machine (Ubuntu 24.04) has GLIBC_2.39" >&2
  fi

  {
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n)"
    echo "commit $(git rev-parse --short=12 HEAD 2>/dev/null || echo '?') ($(git status --porcelain 2>/dev/null | wc -l) paths changed or untracked)"
    echo "$(rustc --version), nvcc $("$nvcc" --version | grep -o 'release [0-9.]*' | cut -d' ' -f2), features cuda, release"
    echo "needs ${glibc:-GLIBC ?}; shared libraries: ${needed:-?}"
  } >"$CHECK_DIR/build-info.txt"

  # The binaries travel gzipped (each embeds every fatbin; raw they outgrew the 64 MiB the device
  # tool carries); `run` unpacks them with python3's tarfile.
  echo
  ls -l "$BIN"
  tar -C "$CHECK_DIR" -czf "$CHECK_DIR/bin.tar.gz" bin || die "packing $BIN failed"
  rm -rf "$BIN"

  # Size that travels: tracked + untracked-not-ignored files (+ shared/ inside the repo) + carry.
  local carry_bytes tree_bytes total
  carry_bytes=$(du -sb "$CHECK_DIR" | cut -f1)
  tree_bytes=$({ git ls-files -z --cached --others --exclude-standard 2>/dev/null || true; } | python3 -c '
import os, sys
names = [n for n in sys.stdin.buffer.read().split(b"\0") if n]
total = sum(os.lstat(n).st_size for n in names if os.path.lexists(n))
if os.path.isdir("shared"):
    for d, _, fs in os.walk("shared"):
        total += sum(os.lstat(os.path.join(d, f)).st_size for f in fs)
print(total)')
  total=$((carry_bytes + tree_bytes))
  ls -l "$CHECK_DIR/bin.tar.gz"
  awk -v c="$carry_bytes" -v t="$tree_bytes" 'BEGIN { m = 1048576
    printf "gpu-check/: %.1f MiB; working tree that travels: %.1f MiB; total %.1f MiB of 64 MiB\n", c / m, t / m, (c + t) / m }'
  cat "$CHECK_DIR/build-info.txt"
  [ "$total" -lt "$TRAVEL_LIMIT" ] || die "what would travel ($total bytes) exceeds the device tool's 64 MiB"
  [ "$total" -lt $((56 * 1024 * 1024)) ] || echo "gpu-check: WARNING: within 8 MiB of the 64 MiB travel limit" >&2

  cat <<'EOF'

Next, with the device tool (one call; the run ends by itself in under 5 minutes):
  run  carry:     ["gpu-check"]
       command:   bash scripts/gpu-check.sh run "$OUT"
       timeout_s: 330
Read gpu-report.md under the reply's files_at (the report is also printed at the end of the output).
EOF
}

# ============================================================================ run (GPU machine)

OUTDIR=
WORK=
START=0
DEADLINE=0
STEP_PID=
STEP_INFO=()
REPORT_RESERVE=20

# step NAME KIND CAP_SECONDS STDOUT_FILE STDERR_FILE CMD...
#   STDOUT/STDERR_FILE are names inside $WORK (the same name: combined).
#   Appends "name kind verdict rc seconds log command" to $WORK/steps.tsv.
step() {
  local name=$1 kind=$2 cap=$3 out=$4 err=$5
  shift 5
  local left t t0 rc
  left=$((DEADLINE - REPORT_RESERVE - $(date +%s)))
  if [ "$left" -lt 5 ]; then
    log "$name: skipped (time budget of ${BUDGET}s used up)"
    record "$name" "$kind" skipped "-" 0 "$out" "$*"
    return 0
  fi
  t=$((cap < left ? cap : left))
  log "$name (timeout ${t}s): $*"
  t0=$(date +%s.%N)
  STEP_INFO=("$name" "$kind" "$out" "$*")
  if [ "$out" = "$err" ]; then
    timeout -k 5 "$t" "$@" >"$WORK/$out" 2>&1 </dev/null &
  else
    timeout -k 5 "$t" "$@" >"$WORK/$out" 2>"$WORK/$err" </dev/null &
  fi
  STEP_PID=$!
  wait "$STEP_PID"
  rc=$?
  STEP_PID=
  STEP_INFO=()
  STEP_SECONDS=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  local verdict
  verdict=$(judge "$kind" "$rc" "$out")
  record "$name" "$kind" "$verdict" "$rc" "$STEP_SECONDS" "$out" "$*"
  log "$name: $verdict (exit $rc, ${STEP_SECONDS}s)"
}

record() {
  local cmd=${7//$'\t'/ }
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "${cmd//$'\n'/ }" >>"$WORK/steps.tsv"
}

# judge KIND RC OUTFILE -> pass | fail | timeout
judge() {
  local kind=$1 rc=$2 f=$WORK/$3 strict=0
  [ "$3" = test-cuda.log ] && strict=1
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then echo timeout; return; fi
  case $kind in
    test)
      # libtest: exit 0, at least one summary line, nothing failed, and (test-cuda) at least
      # one test run.
      # tests/cuda.rs passes with "skipped: no CUDA device" where there is none: not here.
      if grep -q 'skipped: no CUDA device' "$f"; then echo fail; return; fi
      if [ "$rc" = 0 ] && awk '
          /test result: / { n++; for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;/) p += $i; if ($(i+1) ~ /^failed;/) fl += $i } }
          END { exit !(n > 0 && fl == 0 && (p > 0 || !strict)) }' strict="$strict" "$f"; then
        echo pass
      else
        echo fail
      fi ;;
    sanitizer)
      # no error found, the tests passed, and at least one test ran under the tool
      if [ "$rc" = 0 ] && grep -q 'ERROR SUMMARY: 0 errors' "$f" \
          && grep -Eq 'test result: ok\. [1-9][0-9]* passed' "$f"; then
        echo pass
      else
        echo fail
      fi ;;
    bench | peer)
      if [ "$rc" = 0 ] && grep -q '^{' "$f"; then echo pass; else echo fail; fi ;;
    *)
      if [ "$rc" = 0 ]; then echo ok; else echo fail; fi ;;
  esac
}

find_sanitizer() {
  local c
  c=$(command -v compute-sanitizer 2>/dev/null) && { echo "$c"; return; }
  local nvcc_dir
  nvcc_dir=$(dirname "$(command -v nvcc 2>/dev/null || echo /nonexistent/nvcc)")
  for c in "$nvcc_dir/compute-sanitizer" /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer \
           /usr/local/cuda/compute-sanitizer/compute-sanitizer /opt/nvidia/*/compute-sanitizer \
           /opt/nvidia/compute-sanitizer/compute-sanitizer; do
    [ -x "$c" ] && { echo "$c"; return; }
  done
  return 1
}

finish() {
  local rc=$?
  trap - EXIT TERM INT
  [ -n "$STEP_PID" ] && kill -TERM "$STEP_PID" 2>/dev/null
  [ -n "$WORK" ] && [ -d "$WORK" ] || exit "$rc"
  touch "$WORK/steps.tsv"
  if [ "${#STEP_INFO[@]}" -eq 4 ]; then
    record "${STEP_INFO[0]}" "${STEP_INFO[1]}" interrupted "$rc" "?" "${STEP_INFO[2]}" "${STEP_INFO[3]}"
  fi
  [ "$rc" -ge 128 ] && record "(run)" info interrupted "$rc" "$(($(date +%s) - START))" - "signal received: the steps after this were not run"
  [ -f "$CHECK_DIR/build-info.txt" ] && cp "$CHECK_DIR/build-info.txt" "$WORK/"
  [ -f "$CHECK_DIR/ptxas.txt" ] && cp "$CHECK_DIR/ptxas.txt" "$WORK/"

  log "report: python3 bench/gpu/make_report.py"
  if ! timeout -k 5 30 python3 bench/gpu/make_report.py --work "$WORK" --out "$OUTDIR/gpu-report.md" \
      --command "scripts/gpu-check.sh run $OUTDIR" --started "$STARTED" >"$WORK/make-report.log" 2>&1; then
    record report info fail "?" 0 make-report.log "python3 bench/gpu/make_report.py"
    {
      echo "# a3d GPU check (fallback report: make_report.py failed, see make-report.log)"
      echo
      echo '```'
      cat "$WORK/steps.tsv"
      echo '```'
      echo
      echo '```'
      tail -n 30 "$WORK/make-report.log"
      echo '```'
    } >"$OUTDIR/gpu-report.md"
  fi
  local f
  for f in a3d-bench.jsonl torch-peer.jsonl; do
    [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUTDIR/"
  done
  tar -czf "$OUTDIR/logs.tar.gz" -C "$WORK" . 2>/dev/null || log "tar of the logs failed"

  # The exit code, from the recorded verdicts.
  local checks_failed others_failed code=0
  checks_failed=$(awk -F'\t' '($2 == "test" || $2 == "sanitizer") && $3 != "pass" { n++ } END { print n + 0 }' "$WORK/steps.tsv")
  others_failed=$(awk -F'\t' '$2 != "test" && $2 != "sanitizer" && $3 != "pass" && $3 != "ok" { n++ } END { print n + 0 }' "$WORK/steps.tsv")
  if [ "$checks_failed" -gt 0 ]; then code=1; elif [ "$others_failed" -gt 0 ]; then code=2; fi
  [ "$rc" -ge 128 ] && [ "$code" = 0 ] && code=1   # interrupted: incomplete

  echo
  cat "$OUTDIR/gpu-report.md"
  echo
  log "files in $OUTDIR: $(cd "$OUTDIR" && printf '%s ' *)"
  log "done in $(($(date +%s) - START))s: $checks_failed test/sanitizer check(s) not passed, $others_failed other step(s) failed; exit $code"
  rm -rf "$WORK"
  exit "$code"
}

run_check() {
  OUTDIR=${1:-${OUT:-$CHECK_DIR/out}}
  mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
  OUTDIR=$(cd "$OUTDIR" && pwd)
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") || die "mktemp failed"
  START=$(date +%s)
  STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  BUDGET=${GPU_CHECK_BUDGET_S:-280}
  DEADLINE=$((START + BUDGET))
  trap finish EXIT
  trap 'log "interrupted"; exit 143' TERM INT
  : >"$WORK/steps.tsv"
  export RUST_BACKTRACE=1 PYTHONUNBUFFERED=1

  log "a3d GPU check in $repo, results to $OUTDIR, time budget ${BUDGET}s"
  if [ ! -d "$BIN" ] && [ -f "$CHECK_DIR/bin.tar.gz" ]; then
    # Unpacked outside the carried folder (it may be read-only), with python3 (no tar needed).
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
      "$CHECK_DIR/bin.tar.gz" "$WORK" && BIN=$WORK/bin
    log "unpacked $CHECK_DIR/bin.tar.gz into $BIN"
  fi
  if [ ! -x "$BIN/a3d" ] && [ ! -f "$BIN/a3d" ]; then
    log "$BIN/ is missing: run 'scripts/gpu-check.sh prepare' first and carry [\"gpu-check\"]"
    record prepare test missing "-" 0 "-" "scripts/gpu-check.sh prepare (not carried?)"
  fi
  chmod u+x "$BIN"/* 2>/dev/null

  # 1. the GPU
  {
    uname -a
    echo "python3: $(command -v python3) $(timeout 20 python3 --version 2>&1)"
    cat "$CHECK_DIR/build-info.txt" 2>/dev/null
  } >"$WORK/host.txt" 2>&1
  step nvidia-smi info 20 nvidia-smi.txt nvidia-smi.txt nvidia-smi
  local q=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw,power.limit,persistence_mode,compute_mode
  timeout 20 nvidia-smi --query-gpu=$q --format=csv,noheader >"$WORK/gpu.csv" 2>/dev/null \
    || timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$WORK/gpu.csv" 2>/dev/null
  log "GPU: $(head -n1 "$WORK/gpu.csv" 2>/dev/null)"

  # 2. GPU tests
  if [ -f "$BIN/test-cuda" ]; then
    step test-cuda test 60 test-cuda.log test-cuda.log "$BIN/test-cuda"
  else
    record test-cuda test missing "-" 0 "-" "$BIN/test-cuda (not built: no tests/cuda.rs?)"
    log "test-cuda: missing"
  fi

  # 3. a3d benchmark (JSON lines): fusion, then the symmetric operators
  if [ -f "$BIN/a3d" ]; then
    step a3d-bench bench 90 a3d-bench.jsonl a3d-bench.err bash -c '
      bin=$1 runs=$2 dtypes=$3; shift 3
      for op in fusion tsm alignshift depthconv; do
        "$bin" bench "$op" --device cuda "$@" --json || exit $?
      done
      # The detection ops at their own default sizes (RoIAlign: 300 RoIs on [1,512,128,128]).
      "$bin" bench roi-align --device cuda --dtype "$dtypes" --runs "$runs" --json || exit $?
      "$bin" bench nms --device cuda --runs "$runs" --json || exit $?' \
      bench "$BIN/a3d" "$RUNS" "$DTYPES" --dtype "$DTYPES" "${SHAPES[@]}" --runs "$RUNS"
  fi

  # 4. PyTorch peers: the einsum, then the PyTorch implementations of the symmetric operators
  step torch-peer peer 100 torch-peer.jsonl torch-peer.err bash -c '
      runs=$1 dtypes=$2; shift 2
      python3 bench/gpu/torch_peer.py "$@" --dtype "$dtypes" --runs "$runs" --json || exit $?
      for op in tsm alignshift depthconv; do
        python3 bench/torch_context_ops.py --op "$op" --device cuda "$@" --dtype "$dtypes" \
          --runs "$runs" || exit $?
      done
      for op in roi-align nms; do
        python3 bench/torch_detection.py --op "$op" --device cuda --runs "$runs" || exit $?
      done' peer "$RUNS" "$DTYPES" "${SHAPES[@]}"

  # 5. compute-sanitizer: memcheck on all of test-cuda, racecheck on tests named *sanitizer*
  local cs
  if [ -f "$BIN/test-cuda" ]; then
    if cs=$(find_sanitizer); then
      timeout 20 "$cs" --version >"$WORK/compute-sanitizer-version.txt" 2>&1
      # GPU_CHECK_MEMCHECK_ARGS: extra libtest arguments (e.g. "--skip large") if the whole
      # binary outgrows the 90 s under memcheck.
      local mc_extra=()
      read -r -a mc_extra <<<"${GPU_CHECK_MEMCHECK_ARGS:-}"
      step memcheck sanitizer 90 memcheck.log memcheck.log \
        "$cs" --tool memcheck --error-exitcode 86 --print-limit 50 "$BIN/test-cuda" --test-threads=1 "${mc_extra[@]}"
      local filter=() nsan
      nsan=$(timeout 20 "$BIN/test-cuda" --list 2>/dev/null | grep -c 'sanitizer.*: test$')
      if [ "${nsan:-0}" -gt 0 ]; then
        filter=(sanitizer)
      else
        log "racecheck: test-cuda has no test named *sanitizer*: running all of it"
      fi
      step racecheck sanitizer 90 racecheck.log racecheck.log \
        "$cs" --tool racecheck --error-exitcode 86 --print-limit 50 "$BIN/test-cuda" --test-threads=1 "${filter[@]}"
      # The symmetric operators' kernels: memcheck of their reference tests, racecheck of the
      # depth convolution (its weight gradient reduces through shared memory).
      local t
      for t in shift depthconv boxes roi_align batchnorm; do
        [ -f "$BIN/test-$t" ] || continue
        step "memcheck-$t" sanitizer 45 "memcheck-$t.log" "memcheck-$t.log" \
          "$cs" --tool memcheck --error-exitcode 86 --print-limit 50 "$BIN/test-$t" --test-threads=1 every_backend
      done
      # Racecheck of the kernels that share memory between threads: the depth convolution's
      # and the batch-norm statistics' reduction trees, the NMS mask's staged column tile.
      for t in depthconv batchnorm boxes; do
        [ -f "$BIN/test-$t" ] || continue
        step "racecheck-$t" sanitizer 45 "racecheck-$t.log" "racecheck-$t.log" \
          "$cs" --tool racecheck --error-exitcode 86 --print-limit 50 "$BIN/test-$t" --test-threads=1 every_backend
      done
    else
      log "compute-sanitizer not found"
      record memcheck sanitizer missing "-" 0 "-" "compute-sanitizer (not found on PATH or under /usr/local/cuda*)"
      record racecheck sanitizer missing "-" 0 "-" "compute-sanitizer (not found)"
    fi
  fi

  # 6. the other test binaries (CPU tests, the library's unit tests, and tests/shift.rs,
  #    tests/depthconv.rs and tests/torch_parity.rs, which run every op on the GPU too)
  local b
  for b in "$BIN"/test-*; do
    [ -f "$b" ] || continue
    [ "$(basename "$b")" = test-cuda ] && continue
    step "$(basename "$b")" test 45 "$(basename "$b").log" "$(basename "$b").log" "$b"
  done
  # finish (EXIT trap) writes the report and sets the exit code
}

case ${1:-} in
  prepare) shift; prepare "$@" ;;
  run) shift; run_check "$@" ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
