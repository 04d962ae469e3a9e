# The fuzz harness, run by host_tools/fuzz under micropython, one process per target:
#
#   micropython harness.py TARGET COUNT SEED FIRMWARE_DIR  < request.json
#
# The request carries the keys and the host-signed seeds (host_tools, with `cryptography`);
# the target (fz_TARGET.py) makes and mutates its inputs itself from SEED, feeds them to the
# firmware's own code, and reports findings as lines "FINDING kind input-hex detail". The
# last line is "DONE" and a JSON summary: inputs, findings by kind, milliseconds.
import json
import random
import sys
import time

here = sys.argv[0].rsplit("/", 1)[0] if "/" in sys.argv[0] else "."
sys.path.insert(0, here)
sys.path.append(sys.argv[4])
target, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(seed)

from fzlib import Findings  # noqa: E402

request = json.loads(sys.stdin.read())
module = __import__("fz_" + target)
found = Findings()
t0 = time.ticks_ms()
done = module.run(request, count, found)
ms = time.ticks_diff(time.ticks_ms(), t0)
print("DONE", json.dumps({"target": target, "inputs": done, "ms": ms, "findings": found.count,
                          "kinds": found.kinds, "stats": getattr(module, "STATS", {})}))
