# Cards that must be refused (lost, stolen, replaced, fraud): /blacklist.bin on the board,
# written by provisioning (`washpay card blacklist`) and by the server's pushes (sync.md).
# docs/blacklist-format.md is the format: a card list (cardlist.py: a 16-byte header, then
# entries sorted by (UID length, UID), binary-searched in the file) whose 16-byte entries
# carry a reason and the date it was reported.
import struct

from washpay.cardlists import CardList, CardListError

MAGIC = b"WPBL"
ENTRY_SIZE = 16  # not a const(): it would be substituted into "ENTRY_SIZE = ENTRY_SIZE"
REASONS = ("blocked", "lost", "stolen", "replaced", "fraud")
BlacklistError = CardListError  # a UID that cannot be listed


def civil_date(unix_time):
    """'YYYY-MM-DD' of a UTC unix time, by integer arithmetic (the board's epoch does not
    matter): the days-to-civil algorithm for the proleptic Gregorian calendar."""
    z = unix_time // 86400 + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if m <= 2 else 0)
    return "%04d-%02d-%02d" % (y, m, d)


class Blacklist(CardList):
    MAGIC = MAGIC
    ENTRY_SIZE = ENTRY_SIZE
    FILE = "blacklist.bin"
    KIND = "card blacklist"
    LABEL = "blacklist"

    def __init__(self, path="/blacklist.bin"):
        super().__init__(path)

    def lookup(self, uid):
        """(reason, since) if the card is blacklisted, else None. `since` is a unix time
        (0 if unknown)."""
        if not self._find(uid):
            return None
        ent = self._ent
        reason = ent[11]
        name = REASONS[reason] if reason < len(REASONS) else "blocked"
        return name, struct.unpack_from(">I", ent, 12)[0]

    @staticmethod
    def describe(entry):
        """'lost 2026-03-01' for the display and the journal."""
        reason, since = entry
        return "%s %s" % (reason, civil_date(since)) if since else reason

    def entries(self):
        """Yield (uid, reason, since) in file order."""
        for uid, ent in self._entries():
            yield uid, ent[11], struct.unpack_from(">I", ent, 12)[0]

    def update(self, add=(), remove=(), generation=None):
        """Add (uid, reason code, since) entries and remove UIDs, streaming the old file into
        a new one that replaces it atomically (LittleFS rename). For the server's pushes."""
        changes = {}
        for uid in remove:
            changes[bytes(uid)] = None
        for uid, reason, since in add:
            changes[bytes(uid)] = struct.pack(">BI", reason, since)
        return self._merge(changes, generation)
