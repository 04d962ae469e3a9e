# Journal record types: one name per money or fault event. Every record also carries the
# machine's credit and vend state *after* the event, so boot recovery needs only the last one.
BOOT = "boot"
COIN = "coin"  # a coin was accepted: amount = its value
COIN_REJECTED = "coin_rejected"  # a pulse train that could not be a known coin: never credited
VEND_START = "vend_start"  # credit debited for a program; the relay is driven after this
VEND_RUNNING = "vend_running"  # the washer confirmed the start
VEND_DONE = "vend_done"  # the cycle ended
START_FAILED = "start_failed"  # the washer never confirmed: the price is credit again
FAULT = "fault"  # anything the operator must look at (config refused, sensor stuck, ...)

RECORD_TYPES = (
    BOOT, COIN, COIN_REJECTED, VEND_START, VEND_RUNNING, VEND_DONE, START_FAILED, FAULT
)

# vend states, as stored in records and shown in status
IDLE = "idle"
CREDIT = "credit"
STARTING = "starting"
RUNNING = "running"
DONE = "done"
OUT_OF_ORDER = "out_of_order"
