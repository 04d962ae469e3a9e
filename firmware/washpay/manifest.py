# Freezes washpay into a MicroPython image (`washpay firmware build`, for boards without
# PSRAM): its bytecode then runs from flash instead of the GC heap. Paths are relative to
# this file. main.py is not frozen: the board runs /main.py from its filesystem, which
# provisioning writes.
metadata(description="washpay payment-module firmware", version="0.1.0")

package("washpay", base_path="..")
