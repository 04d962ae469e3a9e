# Journal record types, vend states, reason codes and the binary layout of a record: the one
# place the firmware defines the format (docs/journal-format.md is the same table in words;
# host_tools/journal.py is an independent reading of that page, tested against this one).
#
# Every record carries the machine's credit and vend state *after* the event, so boot
# recovery needs only the last one. Names and codes are stored in flash: never renumber,
# only append.
from micropython import const

BOOT = "boot"
COIN = "coin"  # a coin was accepted: amount = its value
COIN_REJECTED = "coin_rejected"  # a pulse train that could not be a known coin: never credited
VEND_START = "vend_start"  # credit debited for a program; the relay is driven after this
VEND_RUNNING = "vend_running"  # the washer confirmed the start
VEND_DONE = "vend_done"  # the cycle ended
START_FAILED = "start_failed"  # the washer never confirmed: the price is credit again, or,
# with a source (kind token / command: paid online), not credited: the server refunds it
FAULT = "fault"  # anything the operator must look at (config refused, sensor stuck, ...)
CARD_DEBIT = "card_debit"  # a card wallet paid: amount, balance before/after, card counter
TOKEN_REDEEM = "token_redeem"  # a QR token paid: source = token id
REMOTE_START = "remote_start"  # the server paid a vend: source = command id
REFUND = "refund"  # money given back (credit returned to a card, coins paid out)
# cards (docs/wallet-format.md): source = UID, card_counter = the counter of the copy written
CARD_TOPUP = "card_topup"  # money put on a card through this board (also: card issued)
CARD_REFUSED = "card_refused"  # a card refused on purpose: blacklisted (reason says why)
CARD_FRAUD = "card_fraud"  # a signal for the server: MAC failure, counter rollback, foreign site
CARD_CANCEL = "card_cancel"  # a committed card payment whose write provably never landed
CARD_UNRESOLVED = "card_unresolved"  # a card write not confirmed: no vend, settled at next tap
CARD_SETTLED = "card_settled"  # an unresolved payment settled: amount = card's part, credited
# QR tokens and remote starts (docs/token-format.md, docs/remote-start.md): an authentic one
# that did not start a wash; source = token / command id, reason says why, amount = its amount
TOKEN_REFUSED = "token_refused"
COMMAND_REFUSED = "command_refused"
# an operator's command from the server executed (docs/sync.md: prices, blacklist, clock,
# status); source = command id, reason = what it changed
COMMAND_DONE = "command_done"
# the cycle ended and the door was not opened within config "collect_ms": laundry left in the
# machine; source = who paid for the cycle (card UID, token / command id; none for coins).
# The server turns these into a credit score and pushes card tiers back (docs/pricing.md)
NOT_COLLECTED = "not_collected"
# a timed program (dryer) running bought more time from the machine's credit: amount = what
# the added time cost, price = the vend's total so far, left_s = the paid time left now
VEND_EXTEND = "vend_extend"
# over-the-air updates (docs/ota.md); reason = the version and why
OTA_REFUSED = "ota_refused"  # an offered release refused: bad signature, hash, expiry, ...
OTA_DONE = "ota_done"  # a new version booted on trial and confirmed itself healthy
OTA_ROLLBACK = "ota_rollback"  # the loader went back to the previous version

# The type code stored in a record is its index here plus one.
RECORD_TYPES = (
    BOOT, COIN, COIN_REJECTED, VEND_START, VEND_RUNNING, VEND_DONE, START_FAILED, FAULT,
    CARD_DEBIT, TOKEN_REDEEM, REMOTE_START, REFUND,
    CARD_TOPUP, CARD_REFUSED, CARD_FRAUD, CARD_CANCEL, CARD_UNRESOLVED, CARD_SETTLED,
    TOKEN_REFUSED, COMMAND_REFUSED, COMMAND_DONE, NOT_COLLECTED, VEND_EXTEND,
    OTA_REFUSED, OTA_DONE, OTA_ROLLBACK,
)
# New money that does not come from a coin already in the machine: refused when the journal
# runs low on space, so that the reserve is left for coins and vends already paid.
CASHLESS = (CARD_DEBIT, TOKEN_REDEEM, REMOTE_START)

# vend states, as stored in records (code = index) and shown in status
IDLE = "idle"
CREDIT = "credit"
STARTING = "starting"
RUNNING = "running"
DONE = "done"
OUT_OF_ORDER = "out_of_order"
STATES = (IDLE, CREDIT, STARTING, RUNNING, DONE, OUT_OF_ORDER)

# Reasons the firmware gives often are stored as a code (index here); any other text goes in
# the record's reason-text field, cut to REASON_TEXT_LEN bytes. Code 0 means "see the text".
REASONS = (
    "",
    "power on",
    "hard reset",
    "watchdog",
    "soft reset",
    "other",
    "washer did not confirm start",
    "power lost before the washer confirmed",
)

# where a payment came from (source kind byte, 0: none); the source id is up to SOURCE_LEN
# bytes
SOURCE_CARD = const(1)  # card UID (4, 7 or 10 bytes)
SOURCE_TOKEN = const(2)  # QR token id
SOURCE_COMMAND = const(3)  # server command id
SOURCE_KINDS = ("", "card", "token", "command")

# flags byte
FLAG_CLOCK_UNTRUSTED = const(1)  # the wall clock had not been set from a trusted source
FLAG_RECOVERED = const(2)  # written by boot recovery about an event before the power cut

# ---- binary layout (all integers big-endian)
VERSION = const(2)  # 2: paid time left (timed programs) took 2 bytes of the reason text
RECORD_SIZE = const(128)  # exactly LittleFS's inline-file limit: a staged record costs no erase
HEADER_SIZE = const(16)  # version, 3 reserved, seq u32, nonce 8: in clear, authenticated
BODY_SIZE = const(96)  # encrypted with AES-256-CTR
TAG_SIZE = const(16)  # HMAC-SHA256 truncated to 128 bits
# body: type, flags, state, reason code, t, boot, amount, credit, price, balance before,
# balance after, card counter, currency, pulses, attempt, source kind, source length,
# source, program, paid time left (seconds, timed programs), reason text
BODY_FORMAT = ">BBBBIIiiiiiI3sBBBB16s10sH25s"
SOURCE_LEN = const(16)
PROGRAM_LEN = const(10)
REASON_TEXT_LEN = const(25)
LEFT_MAX = const(0xFFFF)  # the most paid time (seconds) a record can carry: 18 h

# A segment file is a 32-byte header and SEGMENT_RECORDS records; the first 30 records of a
# segment are staged one per file (stage/NN) until the 31st completes the segment.
SEGMENT_MAGIC = b"WPJS"
SEGMENT_HEADER_SIZE = const(32)
SEGMENT_RECORDS = const(31)  # 32 + 31 * 128 = 4000 bytes: one 4 KiB flash block
SEGMENT_SIZE = const(4000)
HEAD_MAGIC = b"WPJH"
HEAD_SIZE = const(20)

# the text whose MAC identifies the journal keys (keys.py derives them: docs/keys.md)
KEY_CHECK_TEXT = b"washpay/v1/journal key check"
