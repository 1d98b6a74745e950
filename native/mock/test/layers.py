#!/usr/bin/env python3
"""The broker's rooms call downwards only (broker/broker.h lists them): from each object's undefined
symbols and the others' definitions (nm), the calls between broker files must form no cycle.
   test/layers.py BUILD_DIR"""
import glob
import os
import subprocess
import sys

objs = sorted(glob.glob(os.path.join(sys.argv[1] if len(sys.argv) > 1 else 'build', 'obj', 'broker-*.o')))
if not objs:
    sys.exit('layers: no broker objects (build first)')
defs, undef = {}, {}
for o in objs:
    rows = [line.split() for line in subprocess.run(['nm', o], capture_output=True, text=True, check=True).stdout.splitlines()]
    defs[o] = {r[2] for r in rows if len(r) == 3 and r[1] in 'TDBRC'}
    undef[o] = {r[1] for r in rows if len(r) == 2 and r[0] == 'U'}
name = lambda o: os.path.basename(o)[len('broker-'):-2]
calls = {o: {p for s in undef[o] for p in objs if p != o and s in defs[p]} for o in objs}
cycles, state = [], {}


def visit(o, path):
    state[o] = 1
    for p in sorted(calls[o]):
        if state.get(p) == 1:
            cycles.append(' -> '.join(name(x) for x in path[path.index(p):] + [p]))
        elif not state.get(p):
            visit(p, path + [p])
    state[o] = 2


for o in objs:
    if not state.get(o):
        visit(o, [o])
if cycles:
    print('FAIL: broker files call each other in a circle:\n  ' + '\n  '.join(cycles))
    sys.exit(1)
print(f'broker layers: {len(objs)} files, no circle of calls')
