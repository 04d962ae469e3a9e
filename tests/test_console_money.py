"""The console's money pages on a known ledger: revenue (tables, SVG charts, CSV,
reconciliation), transactions (filters, keyset paging, CSV), cards (balances, blacklist
state per board, owner only) and prices (the firmware's own validation and prices in the
preview; a viewer cannot push), read in headless Chromium (Debian's chromium and
chromium-driver, Selenium) from the web app served over HTTP, and over plain HTTP where a
browser adds nothing (CSV bodies, refusals). The same queries on PostgreSQL give the same
figures. Screenshots of the pages go to build/console-screens/, or with
WASHPAY_CONSOLE_SCREENSHOTS=docs/console to the ones the README shows."""

import csv
import datetime
import io
import json
import os
from pathlib import Path

import pytest
from console_env import PASSWORD, add_operators, open_session, request
from web_env import headless_chromium, leave, make_web

from host_tools.server import report, rollup
from host_tools.server.store import open_store
from host_tools.server.web.console import cards as K
from host_tools.server.web.console import ledger_queries as Q

ROOT = Path(__file__).resolve().parent.parent
SHOTS = Path(os.environ.get("WASHPAY_CONSOLE_SCREENSHOTS") or ROOT / "build" / "console-screens")


def utc(*a):
    return int(datetime.datetime(*a, tzinfo=datetime.timezone.utc).timestamp())


DAY0 = utc(2026, 11, 2)  # a Monday
NOW = utc(2026, 12, 3, 12)
CARD = "04aa01"
PHONE_CMD, OPERATOR_CMD = "636d6431", "636d6432"

# (device, seq, type, t, amount, extra): the known ledger
LEDGER = [
    ("laundry-a", 1, "coin", DAY0 + 36000, 200, {}),
    ("laundry-a", 2, "coin", DAY0 + 36005, 50, {}),
    ("laundry-a", 3, "vend_running", DAY0 + 36060, None, {}),
    ("laundry-a", 4, "card_debit", DAY0 + 86400 + 32400, 350,
     {"source": CARD, "source_kind": "card", "card_counter": 7, "balance_before": 1000,
      "balance_after": 650}),
    ("laundry-a", 5, "vend_running", DAY0 + 86400 + 32460, None, {}),
    # voided: the card write never reached the card (card_cancel at the same counter)
    ("laundry-a", 6, "card_debit", DAY0 + 86400 + 43200, 350,
     {"source": CARD, "source_kind": "card", "card_counter": 8, "balance_before": 650,
      "balance_after": 300}),
    ("laundry-a", 7, "card_cancel", DAY0 + 86400 + 43210, None,
     {"source": CARD, "source_kind": "card", "card_counter": 8}),
    ("laundry-a", 8, "token_redeem", DAY0 + 8 * 86400 + 28800, 250,
     {"source": "746f6b31", "source_kind": "token"}),
    ("laundry-a", 9, "vend_running", DAY0 + 8 * 86400 + 28860, None, {}),
    ("laundry-a", 10, "refund", DAY0 + 8 * 86400 + 32400, 100, {}),
    ("laundry-a", 11, "card_topup", DAY0 + 8 * 86400 + 36000, 2000,
     {"source": CARD, "source_kind": "card", "card_counter": 9, "balance_before": 650,
      "balance_after": 2650}),
    # a phone payment's remote start (the pay-by-phone flow's command): revenue
    ("laundry-b", 1, "remote_start", DAY0 + 2 * 86400 + 54000, 300,
     {"source": PHONE_CMD, "source_kind": "command"}),
    ("laundry-b", 2, "vend_running", DAY0 + 2 * 86400 + 54060, None, {}),
    ("laundry-b", 3, "coin", DAY0 + 2 * 86400 + 57600, 100, {"verified": 0}),  # bad tag
    ("laundry-b", 4, "coin", 5000, 200, {"clock_ok": 0}),  # the board's clock not set
    ("laundry-b", 5, "coin", DAY0 + 31 * 86400, 200, {}),  # December
    # an attendant's remote start from the console: the machine's price, no money taken
    ("laundry-b", 6, "remote_start", DAY0 + 2 * 86400 + 61200, 300,
     {"source": OPERATOR_CMD, "source_kind": "command"}),
    ("laundry-b", 7, "vend_running", DAY0 + 2 * 86400 + 61260, None, {}),
]
# the commands behind the remote starts, with the args their senders keep (web/flow.py's
# for a phone payment, web/console/pages/actions.py's for a console start)
COMMANDS = [
    (PHONE_CMD, "laundry-b", {"program": "quick", "amount": 300, "payment": "p-1"}),
    (OPERATOR_CMD, "laundry-b", {"program": "quick", "amount": 0, "operator": "attendant",
                                 "reason": "coin jammed, the customer had paid"}),
]
# newest first, as the transactions page lists them (no vend_running, cancel, bad tag)
TX_ORDER = [("laundry-b", 5), ("laundry-a", 11), ("laundry-a", 10), ("laundry-a", 8),
            ("laundry-b", 6), ("laundry-b", 1), ("laundry-a", 6), ("laundry-a", 4),
            ("laundry-a", 2), ("laundry-a", 1), ("laundry-b", 4)]


def load_ledger(store):
    """The known ledger, stored the way ingest stores records (Tx.insert_records: the
    revenue rollup follows), after the commands that caused its remote starts."""
    with store.transaction() as tx:
        for cid, device, args in COMMANDS:
            tx.execute("INSERT INTO commands (id, device, kind, args, created, status) "
                       "VALUES (?, ?, 'start', ?, ?, 'started')",
                       (cid, device, json.dumps(args), NOW))
        rows = []
        for device, seq, rtype, t, amount, extra in LEDGER:
            f = {"clock_ok": 1, "source": None, "source_kind": "", **extra, "type": rtype,
                 "t": t, "amount": amount, "currency": "EUR", "program": "quick"}
            rows.append((device, seq, b"x", f.pop("verified", 1), f, NOW))
        tx.insert_records(rows)
        for device in ("laundry-a", "laundry-b"):
            tx.execute("INSERT INTO devices (device, high_seq, reported_seq, first_seen, "
                       "last_seen, online) VALUES (?, 11, 11, ?, ?, 1)", (device, NOW, NOW))
        tx.execute("INSERT INTO cards (uid, counter, balance, device, seq, updated) "
                   "VALUES (?, 9, 2650, 'laundry-a', 11, ?)", (CARD, NOW))


# ---- the queries, on SQLite and PostgreSQL alike
def check_queries(store):
    nov = (utc(2026, 11, 1), utc(2026, 12, 1))
    rev = Q.revenue(store, *nov)
    assert [(r["period"], r["device"], r["kind"], r["count"], r["amount"])
            for r in rev["rows"]] == [
        ("2026-11-02", "laundry-a", "cash", 2, 250),
        ("2026-11-03", "laundry-a", "card", 1, 350),
        ("2026-11-04", "laundry-b", "app", 1, 300),
        ("2026-11-10", "laundry-a", "qr", 1, 250)]
    assert rev["totals"] == {"EUR": 1150}
    assert rev["by_device"] == {("laundry-a", "EUR"): 850, ("laundry-b", "EUR"): 300}
    assert len(rev["periods"]) == 30 and rev["periods"][0] == "2026-11-01"
    week = Q.revenue(store, *nov, period="week")
    assert {p: sum(k.values()) for (p, _c), k in week["by_period"].items()} == {
        "2026-W45": 900, "2026-W46": 250}
    month = Q.revenue(store, *nov, period="month", device="laundry-a")
    assert month["totals"] == {"EUR": 850} and month["periods"] == ["2026-11"]
    # the console's remote start is in no revenue figure: a line of its own, at its value
    assert rev["by_kind"] == {("cash", "EUR"): [2, 250], ("card", "EUR"): [1, 350],
                              ("app", "EUR"): [1, 300], ("qr", "EUR"): [1, 250]}
    assert rev["operator"]["rows"] == [{"period": "2026-11-04", "device": "laundry-b",
                                        "currency": "EUR", "count": 1, "amount": 300}]
    assert rev["operator"]["by_currency"] == {"EUR": [1, 300]}
    recon = {r["period"]: r for r in Q.reconciliation(rev)}
    assert (recon["2026-11-10"]["payments"], recon["2026-11-10"]["starts"],
            recon["2026-11-10"]["refunded"], recon["2026-11-10"]["net"]) == (1, 1, 100, 150)
    assert recon["2026-11-02"]["starts"] == 1 and recon["2026-11-02"]["paid"] == 250
    # two washes started that day, one paid by phone, one explained by an operator's command
    r4 = recon["2026-11-04"]
    assert (r4["payments"], r4["paid"], r4["starts"], r4["operator_starts"],
            r4["operator_value"], r4["net"]) == (1, 300, 2, 1, 300, 300)
    # the rollup ingest kept is what the records say
    assert rollup.stored(store) == rollup.recompute(store)
    check_report(report.build(store))

    def walk(n, **f):
        out, after = [], None
        while True:
            page = Q.transactions(store, after=after, limit=n, **f)
            out += [(r["device"], r["seq"]) for r in page["rows"]]
            if not page["next"]:
                return out
            after = page["next"]

    for n in (1, 3, 50):
        assert walk(n) == TX_ORDER
    assert walk(2, device="laundry-a") == [x for x in TX_ORDER if x[0] == "laundry-a"]
    assert walk(1, kind="coins") == [("laundry-b", 5), ("laundry-a", 2), ("laundry-a", 1),
                                     ("laundry-b", 4)]
    assert walk(2, card=CARD.upper()) == [("laundry-a", 11), ("laundry-a", 6),
                                          ("laundry-a", 4)]
    assert walk(1, start=utc(2026, 11, 3), end=utc(2026, 11, 5)) == [
        ("laundry-b", 6), ("laundry-b", 1), ("laundry-a", 6), ("laundry-a", 4)]
    assert walk(1, device="laundry-a", kind="cards") == [("laundry-a", 6), ("laundry-a", 4)]
    first = Q.transactions(store, kind="cards")["rows"]
    assert [r["voided"] for r in first] == [True, False]
    starts = Q.transactions(store, kind="phone")["rows"]
    assert [(r["seq"], r["label"]) for r in starts] == [(6, "operator start (free)"),
                                                        (1, "phone")]
    card = K.detail(store, CARD, NOW)
    assert card["seen"] and (card["card"]["balance"], card["card"]["counter"]) == (2650, 9)
    assert [r["amount"] for r in card["topups"]] == [2000]
    assert [(r["type"], r["seq"]) for r in card["payments"]] == [
        ("card_cancel", 7), ("card_debit", 6), ("card_debit", 4)]
    assert card["flags"] == [] and card["problems"] == [] and card["blacklist"] == {}
    assert not K.detail(store, "0badcafe", NOW)["seen"]


def check_report(rep):
    """`washpay server report` of the known ledger (a dict, as --format json prints it):
    the operator start is in its own list, not in the revenue."""
    assert [(r["device"], r["day"], r["type"], r["count"], r["amount"])
            for r in rep["revenue"]] == [
        ("laundry-a", "2026-11-02", "cash", 2, 250),
        ("laundry-a", "2026-11-03", "card", 1, 350),
        ("laundry-a", "2026-11-10", "qr", 1, 250),
        ("laundry-b", "2026-11-04", "app", 1, 300),
        ("laundry-b", "2026-12-03", "cash", 1, 200),
        ("laundry-b", "clock not set", "cash", 1, 200)]
    assert [(r["device"], r["day"], r["type"], r["count"], r["amount"])
            for r in rep["operator_starts"]] == [
        ("laundry-b", "2026-11-04", "operator", 1, 300)]
    assert [(r["device"], r["day"], r["amount"]) for r in rep["refunds"]] == [
        ("laundry-a", "2026-11-10", 100)]


def check_report_text(text):
    lines = text.splitlines()
    per_device = lines[lines.index("Revenue per device"):]
    assert per_device[2].split() == ["laundry-a", "8.50", "EUR"]
    assert per_device[3].split() == ["laundry-b", "7.00", "EUR"]  # no 3.00 operator start
    title = next(i for i, x in enumerate(lines) if x.startswith("Operator starts"))
    assert "not revenue" in lines[title]
    assert lines[title + 2].split() == ["laundry-b", "2026-11-04", "1", "operator", "start",
                                        "3.00", "EUR"]
    revenue = lines[:lines.index("Revenue per device")]
    assert [x.split()[:3] for x in revenue if "laundry-b" in x] == [
        ["laundry-b", "2026-11-04", "app"], ["laundry-b", "2026-12-03", "cash"],
        ["laundry-b", "clock", "not"]]


def check_report_command(url):
    """The same through the command an operator types, on this database."""
    from test_server_cli import washpay

    r = washpay("server", "report", "--db", url, "--format", "json")
    assert r.returncode == 0, r.stderr
    check_report(json.loads(r.stdout))
    r = washpay("server", "report", "--db", url)
    assert r.returncode == 0, r.stderr
    check_report_text(r.stdout)


def check_http(web):
    """The revenue page's per-type table and totals, and the CSV, served from this
    database: the operator start is a line of its own, outside the totals."""
    tok, _ = open_session(web, "viewer")
    status, _h, body = request(f"{web.url}/console/revenue?from=2026-11-01&to=2026-11-30",
                               token=tok)
    assert status == 200
    assert 'class="big revenue-total" data-currency="EUR" data-amount="1150"' in body
    assert ('class="not-revenue" data-kind="operator" data-currency="EUR" data-count="1" '
            'data-amount="300"') in body
    status, headers, body = request(
        f"{web.url}/console/revenue.csv?from=2026-11-01&to=2026-11-30&period=week", token=tok)
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    assert 'filename="revenue-week-2026-11-01-2026-11-30.csv"' in headers["Content-Disposition"]
    assert list(csv.reader(io.StringIO(body))) == [
        ["period", "device", "type", "currency", "payments", "amount", "amount_minor",
         "revenue"],
        ["2026-W45", "laundry-a", "coins", "EUR", "2", "2.50", "250", "yes"],
        ["2026-W45", "laundry-a", "cards", "EUR", "1", "3.50", "350", "yes"],
        ["2026-W45", "laundry-b", "phone", "EUR", "1", "3.00", "300", "yes"],
        ["2026-W46", "laundry-a", "QR tokens", "EUR", "1", "2.50", "250", "yes"],
        ["2026-W45", "laundry-b", "operator starts (free)", "EUR", "1", "3.00", "300", "no"]]


def test_queries_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    store = open_store(url)
    try:
        load_ledger(store)
        check_queries(store)
    finally:
        store.close()
    check_report_command(url)


def test_queries_report_and_csv_on_postgresql(tmp_path):
    from sync_env import postgres_cluster
    from web_env import Clock

    with postgres_cluster() as url:
        web = make_web(tmp_path, clock=Clock(NOW), store_url=url)
        try:
            load_ledger(web.side)
            check_queries(web.side)
            check_report_command(url)
            add_operators(web)
            web.start("127.0.0.1", 0)
            check_http(web)
        finally:
            web.stop()
            web.side.close()


@pytest.mark.parametrize(("args", "why"), [
    ({"from": "2026-13-01"}, "from '2026-13-01': give a date as YYYY-MM-DD"),
    ({"from": "2026-11-05", "to": "2026-11-01"}, "the range is empty"),
    ({"from": "2020-01-01", "to": "2026-01-01"}, "a range of at most"),
    ({"period": "year"}, "period 'year': one of day, week, month"),
])
def test_bad_revenue_filters_say_what_to_give(served, args, why):
    tok, _ = open_session(served, "viewer")
    q = "&".join(f"{k}={v}" for k, v in args.items())
    status, _h, body = request(f"{served.url}/console/revenue?{q}", token=tok)
    assert status == 400 and why in body.replace("&#39;", "'")
    status, _h, body = request(f"{served.url}/console/revenue.csv?{q}", token=tok)
    assert status == 400 and why in body.replace("&#39;", "'")


@pytest.mark.parametrize(("args", "why"), [
    ("card=xyz", "card 'xyz': a UID in hex"),
    ("type=cash", "type 'cash': one of coins, cards"),
    ("after=garbage", "that page link is broken"),
    ("n=0", "page size 1 to 500"),
    ("to=03/11/2026", "give a date as YYYY-MM-DD"),
])
def test_bad_transaction_filters_say_what_to_give(served, args, why):
    tok, _ = open_session(served, "viewer")
    status, _h, body = request(f"{served.url}/console/transactions?{args}", token=tok)
    assert status == 400 and why in body.replace("&#39;", "'")


# ---- the served app and the browser
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from web_env import Clock

    web = make_web(tmp_path_factory.mktemp("money"), clock=Clock(NOW))
    load_ledger(web.side)
    add_operators(web)
    web.start("127.0.0.1", 0)
    try:
        yield web
    finally:
        web.stop()
        web.side.close()


@pytest.fixture(scope="module")
def browser():
    b = headless_chromium(1280, 1000)
    try:
        yield b
    finally:
        b.quit()


def login(b, web, name):
    from selenium.webdriver.common.by import By

    b.delete_all_cookies()
    b.get(web.url + "/console/login")
    b.find_element(By.ID, "name").send_keys(name)
    b.find_element(By.ID, "password").send_keys(PASSWORD)
    go(b, b.find_element(By.ID, "login-submit"))
    assert b.find_element(By.ID, "operator-role").text == name


def go(b, element):
    """Click what leaves the page (a link, a submit button) and wait for the next page."""
    leave(b, element)


def attrs(b, css, *names):
    from selenium.webdriver.common.by import By

    return [tuple(e.get_attribute(f"data-{n}") for n in names)
            for e in b.find_elements(By.CSS_SELECTOR, css)]


def shot(b, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    b.save_screenshot(str(SHOTS / f"{name}.png"))


def test_revenue_page_shows_the_known_ledger(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    b = browser
    login(b, served, "viewer")
    b.get(served.url + "/console/revenue?from=2026-11-01&to=2026-11-30")
    assert attrs(b, ".revenue-total", "currency", "amount") == [("EUR", "1150")]
    assert "11.50 EUR" in b.find_element(By.CSS_SELECTOR, ".revenue-total").text
    assert attrs(b, ".operator-total", "count", "amount") == [("1", "300")]
    assert attrs(b, ".revenue-row", "period", "device", "kind", "count", "amount") == [
        ("2026-11-02", "laundry-a", "cash", "2", "250"),
        ("2026-11-03", "laundry-a", "card", "1", "350"),
        ("2026-11-04", "laundry-b", "app", "1", "300"),
        ("2026-11-10", "laundry-a", "qr", "1", "250")]
    kinds = {k: (n, a) for k, n, a in attrs(b, "#revenue-kinds tr[data-kind]", "kind",
                                            "count", "amount")}
    assert kinds == {"cash": ("2", "250"), "card": ("1", "350"), "qr": ("1", "250"),
                     "app": ("1", "300"), "operator": ("1", "300")}
    free = b.find_element(By.CSS_SELECTOR, "#revenue-operator tr").text
    assert "operator starts (free): not revenue" in free and "3.00 EUR" in free
    assert attrs(b, ".operator-row", "period", "device", "count", "amount") == [
        ("2026-11-04", "laundry-b", "1", "300")]
    assert attrs(b, "#revenue-devices tr[data-device]", "device", "amount") == [
        ("laundry-a", "850"), ("laundry-b", "300")]
    # the chart says the same: one bar per (day, kind) with money, 30 days on the axis
    bars = attrs(b, "#chart-period-EUR rect.bar", "period", "kind", "amount")
    assert sorted(bars) == [("2026-11-02", "cash", "250"), ("2026-11-03", "card", "350"),
                            ("2026-11-04", "app", "300"), ("2026-11-10", "qr", "250")]
    assert attrs(b, "#chart-device-EUR rect.hbar", "label", "amount") == [
        ("laundry-a", "850"), ("laundry-b", "300")]
    recon = {r[0]: r[1:] for r in attrs(b, ".recon-row", "period", "payments", "paid",
                                         "starts", "operator-starts", "refunds", "refunded",
                                         "net")}
    assert recon == {"2026-11-02": ("2", "250", "1", "0", "0", "0", "250"),
                     "2026-11-03": ("1", "350", "1", "0", "0", "0", "350"),
                     "2026-11-04": ("1", "300", "2", "1", "0", "0", "300"),
                     "2026-11-10": ("1", "250", "1", "0", "1", "100", "150")}
    shot(b, "7-revenue")
    # per week, through the form
    Select(b.find_element(By.NAME, "period")).select_by_visible_text("week")
    go(b, b.find_element(By.CSS_SELECTOR, "#revenue-filters button"))
    rows = attrs(b, ".revenue-row", "period", "kind", "amount")
    assert rows == [("2026-W45", "cash", "250"), ("2026-W45", "card", "350"),
                    ("2026-W45", "app", "300"), ("2026-W46", "qr", "250")]
    # one device, per month
    Select(b.find_element(By.NAME, "period")).select_by_visible_text("month")
    Select(b.find_element(By.NAME, "device")).select_by_visible_text("laundry-b")
    go(b, b.find_element(By.CSS_SELECTOR, "#revenue-filters button"))
    assert attrs(b, ".revenue-row", "period", "device", "amount") == [
        ("2026-11", "laundry-b", "300")]


def test_revenue_csv_holds_the_tables_figures(served):
    check_http(served)


def test_transactions_filters_and_paging_in_the_browser(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    b = browser
    login(b, served, "viewer")
    b.get(served.url + "/console/transactions?n=3")
    seen = []
    for _ in range(10):
        seen += [(d, int(s)) for d, s in attrs(b, ".tx-row", "device", "seq")]
        nxt = b.find_elements(By.ID, "tx-next")
        if not nxt:
            break
        go(b, nxt[0])
    assert seen == TX_ORDER
    assert b.find_elements(By.ID, "tx-first")  # back to the newest from a deep page
    b.get(served.url + "/console/transactions")
    row = b.find_element(By.CSS_SELECTOR, '.tx-row[data-device="laundry-a"][data-seq="6"]')
    assert "voided" in row.text and "3.50 EUR" in row.text
    clock_unset = b.find_element(By.CSS_SELECTOR, '.tx-row[data-device="laundry-b"]'
                                                  '[data-seq="4"]')
    assert "clock not set" in clock_unset.text
    shot(b, "8-transactions")
    # the form: one device, card payments, one card typed in capitals with colons
    Select(b.find_element(By.NAME, "device")).select_by_visible_text("laundry-a")
    Select(b.find_element(By.NAME, "type")).select_by_visible_text("cards")
    b.find_element(By.NAME, "card").send_keys("04:AA:01")
    go(b, b.find_element(By.CSS_SELECTOR, "#tx-filters button"))
    assert attrs(b, ".tx-row", "device", "seq", "type", "amount") == [
        ("laundry-a", "6", "card_debit", "350"), ("laundry-a", "4", "card_debit", "350")]
    # a date range (the end day included)
    b.get(served.url + "/console/transactions?from=2026-11-03&to=2026-11-04")
    assert attrs(b, ".tx-row", "device", "seq") == [("laundry-b", "6"), ("laundry-b", "1"),
                                                    ("laundry-a", "6"), ("laundry-a", "4")]
    free = b.find_element(By.CSS_SELECTOR, '.tx-row[data-device="laundry-b"][data-seq="6"]')
    assert "operator start (free)" in free.text
    # a filter that cannot be used says what to give, and keeps what was typed
    b.get(served.url + "/console/transactions?card=nothex")
    assert "a UID in hex" in b.find_element(By.ID, "tx-error").text
    assert b.find_element(By.NAME, "card").get_attribute("value") == "nothex"


def test_transactions_csv_follows_the_filters_over_every_page(served):
    tok, _ = open_session(served, "viewer")
    status, _h, body = request(f"{served.url}/console/transactions.csv?type=coins",
                               token=tok)
    assert status == 200
    rows = list(csv.DictReader(io.StringIO(body)))
    assert [(r["device"], r["seq"], r["amount"], r["amount_minor"]) for r in rows] == [
        ("laundry-b", "5", "2.00", "200"), ("laundry-a", "2", "0.50", "50"),
        ("laundry-a", "1", "2.00", "200"), ("laundry-b", "4", "2.00", "200")]
    assert rows[0]["time_utc"] == "2026-12-03 00:00:00"
    status, _h, body = request(f"{served.url}/console/transactions.csv?card={CARD}",
                               token=tok)
    rows = list(csv.DictReader(io.StringIO(body)))
    assert [(r["type"], r["voided"], r["balance_after"]) for r in rows] == [
        ("card_topup", "", "2650"), ("card_debit", "yes", "300"), ("card_debit", "", "650")]


# ---- cards
def test_card_page_and_blacklist_state_per_board(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    b = browser
    login(b, served, "attendant")
    b.get(served.url + "/console/cards")
    assert attrs(b, ".card-row", "uid", "balance") == [(CARD, "2650")]
    b.get(served.url + f"/console/cards/{CARD}")
    assert b.find_element(By.ID, "card-balance").get_attribute("data-balance") == "2650"
    assert b.find_element(By.ID, "card-score").get_attribute("data-score") == "100"
    assert [e.get_attribute("data-amount")
            for e in b.find_elements(By.CSS_SELECTOR, ".topup-row")] == ["2000"]
    assert not b.find_elements(By.ID, "blacklist")  # an attendant does not blacklist
    _tok, csrf_a = open_session(served, "attendant")
    status, _h, _b = request(f"{served.url}/console/cards/{CARD}/blacklist", "POST",
                             token=_tok, form={"csrf": csrf_a, "reason": "lost"})
    assert status == 403
    sent = len(served.sender.sent)
    login(b, served, "owner")
    b.get(served.url + f"/console/cards/{CARD}")
    Select(b.find_element(By.NAME, "reason")).select_by_visible_text("stolen")
    go(b, b.find_element(By.ID, "blacklist"))
    assert "blacklisted (stolen)" in b.find_element(By.CSS_SELECTOR, ".flash-ok").text
    # one command per board the console knows (the ledger's and the catalogue's)
    boards = sorted(c[0] for c in served.sender.sent[sent:])
    assert boards == ["laundry-a", "laundry-b", "sim-0001"]
    assert all(c[2] == "blacklist-add" and c[4]["cards"][0][:2] == [CARD, "stolen"]
               for c in served.sender.sent[sent:])
    state = attrs(b, ".bl-row", "device", "state", "status")
    assert state == [(d, "blacklisted", "sent") for d in boards]
    shot(b, "9-card")
    # a board's reply shows as its push state
    from web_env import reply

    cid = next(c[1] for c in served.sender.sent[sent:] if c[0] == "laundry-a")
    reply(served, cid, "done", blacklist=1)
    b.refresh()
    assert ("laundry-a", "blacklisted", "done") in attrs(b, ".bl-row", "device", "state",
                                                         "status")
    audit = served.console.accounts.audit_rows(actor="owner", action="blacklist_add")
    assert audit and audit[0]["target"] == CARD and audit[0]["detail"]["reason"] == "stolen"
    go(b, b.find_element(By.ID, "unblacklist"))
    assert {s for _d, s, _st in attrs(b, ".bl-row", "device", "state", "status")} == {
        "removed"}
    removed = served.console.accounts.audit_rows(actor="owner", action="blacklist_remove")
    assert removed and removed[0]["target"] == CARD
    assert sorted(removed[0]["detail"]["boards"]) == boards
    # a bad reason, forged past the form, is refused and sends nothing
    tok, csrf = open_session(served, "owner")
    n = len(served.sender.sent)
    status, _h, body = request(f"{served.url}/console/cards/{CARD}/blacklist", "POST",
                               token=tok, form={"csrf": csrf, "reason": "bored"})
    assert status == 400 and "one of blocked, lost" in body
    assert len(served.sender.sent) == n


# ---- prices
WEEKEND = {"version": 7, "rules": [{"days": "sat,sun", "percent": 20}],
           "tiers": {"staff": {"percent": -50}, "kids": {"programs": ["quick"]}}}


def fill_prices(b, table, at=None, device=None):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    if device:
        Select(b.find_element(By.ID, "prices-device")).select_by_value(device)
    area = b.find_element(By.ID, "prices-table")
    b.execute_script("arguments[0].value = arguments[1]", area,
                     table if isinstance(table, str) else json.dumps(table))
    if at:
        b.execute_script("arguments[0].value = arguments[1]",
                         b.find_element(By.ID, "prices-at"), at)


def test_price_preview_uses_the_firmwares_rules_and_a_viewer_cannot_push(served, browser):
    from selenium.webdriver.common.by import By

    b = browser
    login(b, served, "viewer")
    b.get(served.url + "/console/prices?device=sim-0001")
    assert not b.find_elements(By.ID, "prices-push")
    fill_prices(b, WEEKEND, at="2026-11-07T10:00")  # a Saturday: +20 %
    go(b, b.find_element(By.ID, "prices-preview"))
    rows = {e.get_attribute("data-program"): e for e in
            b.find_elements(By.CSS_SELECTOR, ".preview-row")}
    assert {p: e.get_attribute("data-price") for p, e in rows.items()} == {
        "quick": "300", "standard": "420", "heavy": "540"}
    staff = [e.get_attribute("data-price") for e in
             b.find_elements(By.CSS_SELECTOR, '.preview-row td[data-tier="staff"]')]
    assert staff == ["175", "245", "315"]  # 100 + 20 - 50 %
    kids = [e.text for e in b.find_elements(By.CSS_SELECTOR, '.preview-row td[data-tier="kids"]')]
    assert kids[0] == "3.00 EUR" and kids[1:] == ["not for this tier"] * 2
    b.execute_script("document.getElementById('prices-preview-table').scrollIntoView()")
    shot(b, "10-prices")
    fill_prices(b, WEEKEND, at="2026-11-09T10:00")  # a Monday: base prices
    go(b, b.find_element(By.ID, "prices-preview"))
    assert [e.get_attribute("data-price") for e in
            b.find_elements(By.CSS_SELECTOR, ".preview-row")] == ["250", "350", "450"]
    # a table the board would refuse: the firmware's own words, the text kept
    bad = '{"version": 7, "rules": [{"days": "sat,sun", "percent": 150}]}'
    fill_prices(b, bad)
    go(b, b.find_element(By.ID, "prices-preview"))
    assert "pricing.rules[0].percent" in b.find_element(By.ID, "prices-error").text
    assert b.find_element(By.ID, "prices-table").get_attribute("value") == bad
    fill_prices(b, "{not json")
    go(b, b.find_element(By.ID, "prices-preview"))
    assert "the table is not JSON" in b.find_element(By.ID, "prices-error").text
    # past the page: the push itself refuses a viewer (and an attendant), sends nothing
    n = len(served.sender.sent)
    for role in ("viewer", "attendant"):
        tok, csrf = open_session(served, role)
        status, _h, body = request(f"{served.url}/console/prices/push", "POST", token=tok,
                                   form={"csrf": csrf, "device": "sim-0001",
                                         "table": json.dumps(WEEKEND)})
        assert status == 403 and "needs the owner role" in body
    assert len(served.sender.sent) == n
    assert served.console.accounts.audit_rows(actor="viewer", action="refused")
    # an owner's session, but a form not from this console (no or a wrong CSRF token)
    tok, _csrf = open_session(served, "owner")
    for form in ({}, {"csrf": "forged"}):
        for path in ("/console/prices/push", f"/console/cards/{CARD}/blacklist"):
            status, _h, body = request(served.url + path, "POST", token=tok, form={
                **form, "device": "sim-0001", "table": json.dumps(WEEKEND), "reason": "lost"})
            assert status == 400 and "did not come from this console" in body
    assert len(served.sender.sent) == n


def test_owner_pushes_prices_and_sees_each_boards_version(served, browser):
    from selenium.webdriver.common.by import By
    from web_env import reply

    b = browser
    login(b, served, "owner")
    b.get(served.url + "/console/prices?device=sim-0001")
    n = len(served.sender.sent)
    fill_prices(b, {**WEEKEND, "version": 0})
    go(b, b.find_element(By.ID, "prices-push"))
    assert "is not newer than what the board holds" in b.find_element(
        By.ID, "prices-error").text
    assert len(served.sender.sent) == n
    fill_prices(b, WEEKEND, device="all")
    go(b, b.find_element(By.ID, "prices-push"))
    assert "prices v7 sent to" in b.find_element(By.CSS_SELECTOR, ".flash-ok").text
    pushed = served.sender.sent[n:]
    assert sorted(c[0] for c in pushed) == ["laundry-a", "laundry-b", "sim-0001"]
    assert all(c[2] == "price-table" and c[4]["table"] == WEEKEND for c in pushed)
    assert {r[1:] for r in attrs(b, ".history-row", "device", "version", "status")} == {
        ("7", "sent")}
    cid = next(c[1] for c in pushed if c[0] == "sim-0001")
    reply(served, cid, "done", reason="prices v7 (was v0)", prices_version=7)
    refused = next(c[1] for c in pushed if c[0] == "laundry-b")
    reply(served, refused, "refused", reason="older prices v7 (has v9)")
    b.get(served.url + "/console/prices")
    hist = {d: (v, s) for d, v, s in attrs(b, ".history-row", "device", "version", "status")}
    assert hist == {"sim-0001": ("7", "done"), "laundry-b": ("7", "refused"),
                    "laundry-a": ("7", "sent")}
    assert "older prices v7 (has v9)" in b.find_element(
        By.CSS_SELECTOR, '.history-row[data-device="laundry-b"]').text
    held = dict(attrs(b, ".held-row", "device", "version"))
    assert held["sim-0001"] == "7" and held["laundry-b"] == "0"
    audit = served.console.accounts.audit_rows(actor="owner", action="price_push")
    assert audit[0]["detail"]["version"] == 7 and audit[0]["target"] == "all"


def test_a_long_revenue_table_is_left_to_the_csv(served, monkeypatch):
    from host_tools.server.web.console.pages import revenue as page

    monkeypatch.setattr(page, "DETAIL_MAX", 3)
    tok, _ = open_session(served, "viewer")
    url = f"{served.url}/console/revenue?from=2026-11-01&to=2026-11-30"
    status, _h, body = request(url, token=tok)
    assert status == 200 and 'id="revenue-rows"' not in body
    assert "4 rows: too many to read here" in body and "/console/revenue.csv?" in body
    assert 'data-amount="1150"' in body  # the totals, charts and the rest stay
    status, _h, body = request(url + "&device=laundry-b", token=tok)
    assert 'id="revenue-rows"' in body and 'class="revenue-row"' in body
