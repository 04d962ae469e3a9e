"""Operator accounts, sessions, login failures and the audit log: tables on the ledger's
store (SQLite or PostgreSQL) beside the ingest and payment tables (docs/console.md).

Passwords are kept as scrypt hashes (hashlib.scrypt, N=2^14, r=8, p=1, a 16-byte random
salt per password): "scrypt$N$r$p$salt$hash" (salt and hash URL-safe base64). A session's
cookie value is never stored: only its SHA-256, so a copy of the database opens no session.
"""

import base64
import hashlib
import json
import secrets
import time

from host_tools.server.web.db import LockedStore

ROLES = ("viewer", "attendant", "owner")  # each may do what the ones before it may
RANK = {r: i for i, r in enumerate(ROLES)}
MIN_PASSWORD = 10
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789._-@")

SCHEMA = """
CREATE TABLE IF NOT EXISTS operators (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password TEXT NOT NULL,
    created {real} NOT NULL,
    updated {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS operator_sessions (
    token_hash TEXT PRIMARY KEY,
    operator TEXT NOT NULL,
    csrf TEXT NOT NULL,
    addr TEXT,
    created {real} NOT NULL,
    seen {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS login_failures (
    kind TEXT NOT NULL,
    who TEXT NOT NULL,
    at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS login_failures_who ON login_failures (kind, who, at);
CREATE TABLE IF NOT EXISTS audit_log (
    id {serial},
    at {real} NOT NULL,
    actor TEXT NOT NULL,
    role TEXT,
    action TEXT NOT NULL,
    target TEXT,
    detail TEXT,
    addr TEXT
);
CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at);
"""

_SCRYPT = (2 ** 14, 8, 1)  # N, r, p: 16 MiB and about 50 ms per hash
_DUMMY = None  # a hash to check against when the operator does not exist (same time taken)


class AccountError(Exception):
    """A user command or login cannot be done; the message says what to do."""


def hash_password(password):
    n, r, p = _SCRYPT
    salt = secrets.token_bytes(16)
    h = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(h)}"


def check_password(stored, password):
    """Whether `password` is the one `stored` (a hash_password string) was made from."""
    try:
        algo, n, r, p, salt, want = stored.split("$")
        if algo != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(_unb64(want)), maxmem=64 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return secrets.compare_digest(got, _unb64(want))


def _b64(b):
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def check_name(name):
    if not name or len(name) > 64 or not set(name) <= NAME_CHARS:
        raise AccountError(f"operator name {name!r}: 1 to 64 of a-z 0-9 . _ - @ (lower case)")
    return name


def check_role(role):
    if role not in RANK:
        raise AccountError(f"role {role!r}: one of {', '.join(ROLES)}")
    return role


def check_new_password(password):
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password is too short: at least {MIN_PASSWORD} characters "
                           "(a few words make a good one)")
    if password != password.strip():
        raise AccountError("the password starts or ends with a space: leave them out")
    return password


def token_hash(token):
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts(LockedStore):
    """The operators, their sessions, login failures and the audit log on one store."""

    def __init__(self, store, lock=None, clock=time.time):
        super().__init__(store, lock)
        self.clock = clock
        self.create_tables(SCHEMA)

    # ---- operators
    def add(self, name, role, password):
        check_name(name), check_role(role), check_new_password(password)
        now = self.clock()
        with self.tx() as tx:
            if tx.one("SELECT 1 FROM operators WHERE name = ?", (name,)):
                raise AccountError(f"operator {name} exists: change the password with "
                                   f"`washpay server user passwd {name}`, or remove it first")
            tx.execute("INSERT INTO operators (name, role, password, created, updated) "
                       "VALUES (?, ?, ?, ?, ?)", (name, role, hash_password(password), now, now))

    def remove(self, name):
        """Remove an operator and end their sessions. The last owner stays: someone must be
        able to manage the console."""
        with self.tx() as tx:
            row = tx.one("SELECT role FROM operators WHERE name = ?", (name,))
            if row is None:
                raise AccountError(f"no operator {name} (`washpay server user list`)")
            if row[0] == "owner" and tx.one(
                    "SELECT COUNT(*) FROM operators WHERE role = 'owner'")[0] == 1:
                raise AccountError(f"{name} is the last owner: add another owner first")
            tx.execute("DELETE FROM operators WHERE name = ?", (name,))
            tx.execute("DELETE FROM operator_sessions WHERE operator = ?", (name,))

    def passwd(self, name, password, role=None):
        """A new password (and role, if given): ends the operator's sessions and clears
        their failed logins (an owner's way to unlock a locked account)."""
        check_new_password(password)
        if role is not None:
            check_role(role)
        with self.tx() as tx:
            row = tx.one("SELECT role FROM operators WHERE name = ?", (name,))
            if row is None:
                raise AccountError(f"no operator {name} (`washpay server user list`)")
            if role is not None and row[0] == "owner" and role != "owner" and tx.one(
                    "SELECT COUNT(*) FROM operators WHERE role = 'owner'")[0] == 1:
                raise AccountError(f"{name} is the last owner: add another owner first")
            tx.execute("UPDATE operators SET password = ?, role = ?, updated = ? "
                       "WHERE name = ?",
                       (hash_password(password), role or row[0], self.clock(), name))
            tx.execute("DELETE FROM operator_sessions WHERE operator = ?", (name,))
            tx.execute("DELETE FROM login_failures WHERE kind = 'user' AND who = ?", (name,))

    def list(self):
        rows = self.query("SELECT o.name, o.role, o.created, o.updated, "
                          "(SELECT MAX(seen) FROM operator_sessions s "
                          "WHERE s.operator = o.name) FROM operators o ORDER BY o.name")
        return [dict(zip(("name", "role", "created", "updated", "last_active"), r,
                         strict=True)) for r in rows]

    def role(self, name):
        rows = self.query("SELECT role FROM operators WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def verify(self, name, password):
        """The operator's role if the password is theirs, else None (as slow either way)."""
        global _DUMMY
        rows = self.query("SELECT role, password FROM operators WHERE name = ?", (name,))
        if not rows:
            if _DUMMY is None:
                _DUMMY = hash_password(secrets.token_hex(8))
            check_password(_DUMMY, password)
            return None
        return rows[0][0] if check_password(rows[0][1], password) else None

    # ---- login failures: a lockout is `limit` failures within `window_s`, per kind
    def failures(self, kind, who, window_s):
        """(how many failures of `who` within the window, when the oldest of them ages out)."""
        since = self.clock() - window_s
        n, oldest = self.query("SELECT COUNT(*), MIN(at) FROM login_failures "
                               "WHERE kind = ? AND who = ? AND at > ?", (kind, who, since))[0]
        return n, (oldest + window_s if oldest is not None else None)

    def failed(self, pairs, window_s):
        now = self.clock()
        with self.tx() as tx:
            for kind, who in pairs:
                tx.execute("INSERT INTO login_failures (kind, who, at) VALUES (?, ?, ?)",
                           (kind, who, now))
            # what no lockout looks at any more
            tx.execute("DELETE FROM login_failures WHERE at < ?", (now - 4 * window_s,))

    def clear_failures(self, kind, who):
        with self.tx() as tx:
            tx.execute("DELETE FROM login_failures WHERE kind = ? AND who = ?", (kind, who))

    # ---- sessions
    def open_session(self, name, addr):
        """A new session for `name`: (cookie token, csrf token)."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        now = self.clock()
        with self.tx() as tx:
            tx.execute("INSERT INTO operator_sessions (token_hash, operator, csrf, addr, "
                       "created, seen) VALUES (?, ?, ?, ?, ?, ?)",
                       (token_hash(token), name, csrf, addr, now, now))
        return token, csrf

    def session(self, token, idle_s, max_s):
        """{"operator", "role", "csrf", "created"} of a live session (its last use moved to
        now), or None: no such session, idle longer than `idle_s`, older than `max_s`, or its
        operator removed. A dead session's row is deleted."""
        if not token:
            return None
        now = self.clock()
        h = token_hash(token)
        with self.tx() as tx:
            row = tx.one("SELECT s.operator, o.role, s.csrf, s.created, s.seen "
                         "FROM operator_sessions s JOIN operators o ON o.name = s.operator "
                         "WHERE s.token_hash = ?", (h,))
            if row is None:
                return None
            name, role, csrf, created, seen = row
            if now - seen > idle_s or now - created > max_s:
                tx.execute("DELETE FROM operator_sessions WHERE token_hash = ?", (h,))
                return None
            tx.execute("UPDATE operator_sessions SET seen = ? WHERE token_hash = ?", (now, h))
        return {"operator": name, "role": role, "csrf": csrf, "created": created}

    def close_session(self, token):
        with self.tx() as tx:
            tx.execute("DELETE FROM operator_sessions WHERE token_hash = ?",
                       (token_hash(token),))

    # ---- audit log
    def audit(self, actor, role, action, target=None, detail=None, addr=None):
        with self.tx() as tx:
            tx.execute("INSERT INTO audit_log (at, actor, role, action, target, detail, addr) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (self.clock(), actor, role, action, target,
                        json.dumps(detail, default=str, sort_keys=True)
                        if detail is not None else None, addr))

    def audit_rows(self, limit=200, before=None, actor=None, action=None):
        """The newest audit rows first: [{"id", "at", "actor", ...}]."""
        where, args = [], []
        if before is not None:
            where.append("id < ?")
            args.append(before)
        if actor:
            where.append("actor = ?")
            args.append(actor)
        if action:
            where.append("action = ?")
            args.append(action)
        sql = ("SELECT id, at, actor, role, action, target, detail, addr FROM audit_log"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY id DESC LIMIT ?")
        names = ("id", "at", "actor", "role", "action", "target", "detail", "addr")
        out = []
        for r in self.query(sql, (*args, int(limit))):
            row = dict(zip(names, r, strict=True))
            row["detail"] = json.loads(row["detail"]) if row["detail"] else None
            out.append(row)
        return out
