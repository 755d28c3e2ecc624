#!/bin/sh
# `make test` after the build: runs every ctest test and ends with one summary line
# "N passed, M failed" (CI reads the last line). Exit status is ctest's.
set -u
BUILD=$1
JOBS=${2:-2}
LOG="$BUILD/ctest-last.log"
cd "$BUILD" || exit 2
ctest --output-on-failure -j "$JOBS" 2>&1 | tee ctest-last.log
rc=$(grep -q "tests failed out of" ctest-last.log && \
     grep -q "^100% tests passed" ctest-last.log && echo 0 || echo 1)
line=$(grep -E "tests passed, [0-9]+ tests failed out of [0-9]+" ctest-last.log | tail -n 1)
total=$(echo "$line" | sed -E 's/.*out of ([0-9]+).*/\1/')
failed=$(echo "$line" | sed -E 's/.* ([0-9]+) tests failed.*/\1/')
if [ -z "$line" ]; then
  echo "0 passed, 1 failed (ctest did not run; see $LOG)"
  exit 1
fi
echo "$((total - failed)) passed, $failed failed"
exit "$rc"
