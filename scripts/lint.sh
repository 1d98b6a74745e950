#!/usr/bin/env bash
# npm run lint: ESLint and Prettier over the TypeScript and JavaScript, the type checker over all of
# it (lib/ as built, the tests and the benchmarks strictly, the JavaScript with checkJs), and clang-format over the C
# and C++. Fails on the first finding. `npm run format` fixes what the formatters can.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f dist/cjs/index.d.ts ] || npm run -s build:ts   # the tests are checked against the built types
npx eslint --max-warnings 0 .
npx prettier --check --log-level warn .
npx tsc -p tsconfig.json --noEmit
npx tsc -p tsconfig.check.json
npx tsc -p tsconfig.checkjs.json
npx tsc -p examples --noEmit
npx tsc -p bench --noEmit
command -v clang-format >/dev/null || { echo "lint: clang-format is missing (apt-get install clang-format)" >&2; exit 1; }
git ls-files -z '*.c' '*.h' '*.cc' | xargs -0 clang-format --dry-run -Werror
echo "lint: clean (eslint, prettier, tsc x5, clang-format)"
