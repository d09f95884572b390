#!/usr/bin/env python3
"""Samples the CPU time the hypervisor stole from this VM (/proc/stat's steal column, all CPUs,
in 1/100 s ticks) every 20 ms, writing "wall-clock seconds, ticks" lines until killed. A thread
of ours that stalls for 10 ms while the host runs something else on our vCPU shows as a tick of
steal at that time: tools/host/test-reload.sh uses it to tell a stall of the VM from one the
engine caused."""
import sys
import time


def steal_ticks():
    with open('/proc/stat') as stat:
        return int(stat.readline().split()[8])


with open(sys.argv[1], 'w', buffering=1) as out:
    last = None
    while True:
        ticks = steal_ticks()
        if ticks != last:
            out.write(f"{time.time():.6f} {ticks}\n")
            last = ticks
        time.sleep(0.02)
