#!/usr/bin/env node
'use strict';
// The xen-vchan command. Its source is lib/cli/ (TypeScript, built with the library into dist/).
require('../dist/cjs/cli/main.js').run();
