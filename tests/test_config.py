"""config.json refused field by field, whatever it holds (issue 18): an error message never
shows a value by an unbounded repr (a value nested a thousand deep exhausted the stack in
`%r` and stopped the board at the REPL), config.load never raises, and a board with such a
file comes up out of order naming the field. Under the real micropython, 64- and 32-bit."""

import json

import pytest
from conftest import micropython_i386, run_micropython

DEEP = "[" * 1300 + "1" + "]" * 1300  # 601 levels suffice on the 32-bit interpreter
CASES = [
    ('{"decimals": ' + DEEP + "}", "decimals must be an integer from 0 to 3, not a list"),
    ('{"programs": [{"name": "q", "price": 1, "mode": ' + DEEP + "}]}",
     "programs[0].mode must be cycle or timed, not a list"),
    ('{"coins": {"table": {"1": ' + DEEP.replace("1", "{}") + "}}}",
     "coins.table[1] must be an integer from 1 to 1000000, not a list"),
    ('{"sync": {"batch": {"a": ' + DEEP + "}}}",
     "sync.batch must be an integer from 1 to 32, not a dict"),
    ('{"pricing": {"rules": [{"days": ' + DEEP + "}]}}",
     "pricing.rules[0].days must be text such as mon-fri,sun, not a list"),
    ('{"pricing": {"tiers": {"x": {"programs": [' + DEEP + "]}}}}",
     "pricing.tiers.x: no program a list"),
    ('{"currency": "%s"}' % ("E" * 5000), "currency must be text of at most 3 characters"),
    ('{"broker": "http://%s"}' % ("h" * 100),
     "broker must be an mqtt:// or mqtts:// URL, not 'http://hhhhhhhhhhhhh'..."),
    ('{"%s": 1}' % ("k" * 5000), "unknown config key 'kkkkkkkkkkkkkkkkkkkk'..."),
    ('{"max_credit": %s}' % ("9" * 400), "max_credit must be an integer from 1 to 10000000, "
     "not 99999999999999999999..."),
    ('{"watchdog_ms": null}', "watchdog_ms must be an integer from 1000 to 60000, not null"),
    # MicroPython's JSON reads keys that are not text (found by `make fuzz`)
    ('{"coins": {"table": {null: 50}}}', "coins.table key null is not a pulse count"),
    ('{"coins": {"table": {1: 50}}}', "coins.table key 1 is not a pulse count"),
    ('{"sync": {true: 5}}', "unknown sync setting true"),
    ('{1.5: 2}', "unknown config key 1.5"),
]
INTERPRETERS = [None] + [x for x in (micropython_i386(),) if x]


def run_both(code, tmp_path):
    outs = []
    for interp in INTERPRETERS:
        stdout = run_micropython(f"DIR = {str(tmp_path)!r}\n" + code, interpreter=interp)[1]
        outs.append([json.loads(x[7:]) for x in stdout.splitlines() if x.startswith("RESULT ")])
    return outs


def test_errors_name_the_field_and_never_print_the_value_whole(tmp_path):
    code = f"""
import json
from washpay import config
for text in {[c[0] for c in CASES]!r}:
    try:
        config.validate(json.loads(text))
        print("RESULT", json.dumps("accepted"))
    except config.ConfigError as e:
        print("RESULT", json.dumps(str(e)))
    except Exception as e:
        print("RESULT", json.dumps("crash " + type(e).__name__))
"""
    for got in run_both(code, tmp_path):
        assert got == [c[1] for c in CASES]


def test_load_never_raises(tmp_path):
    files = [c[0] for c in CASES] + [
        "[" * 200000,  # deeper than the heap holds: MemoryError while reading
        '{"decimals": 2',  # not JSON
        "[1, 2]",  # not an object
    ]
    for i, text in enumerate(files):
        (tmp_path / f"c{i}.json").write_text(text)
    code = f"""
import json
from washpay import config
for i in range({len(files)}):
    try:
        cfg, err = config.load(DIR + "/c%d.json" % i)
        print("RESULT", json.dumps([cfg == config.validate({{}}), err]))
    except Exception as e:
        print("RESULT", json.dumps(["raised", type(e).__name__]))
"""
    for got in run_both(code, tmp_path):
        assert [g[0] for g in got] == [True] * len(files), got
        assert [g[1] for g in got[: len(CASES)]] == [c[1] for c in CASES]
        assert got[-3][1] == "config.json is too big to read"
        assert got[-2][1].startswith("config.json is not valid JSON")
        assert got[-1][1] == "config must be a JSON object"


@pytest.mark.device
def test_a_board_with_a_deeply_nested_config_is_out_of_order_naming_the_field(tmp_path):
    from host_tools.sim.client import SimBoard

    prov = tmp_path / "st" / "provision"
    prov.mkdir(parents=True)
    (prov / "config.json").write_text(CASES[0][0])
    board = SimBoard(tmp_path / "st", log=tmp_path / "sim.log")
    board.start()
    try:
        st = board.wait_for(lambda s: s.get("state") == "out_of_order", timeout=30,
                            what="the board out of order")
        assert st["firmware"]["config_error"] == CASES[0][1]
    finally:
        board.stop()


def test_a_pushed_config_too_deep_for_the_stack_to_write_is_refused(tmp_path):
    # an ESP32's task stack is far smaller than the unix port's: a table nested ~450 deep
    # in a key the price table ignores validates, then json.dump of it runs out of stack.
    # Here the stack is used up by calls first, down to where json.dumps of it fails.
    code = """
import json
from washpay.net import Commands
from washpay.net.commands import _Refused, _store
class Cache:
    floor = 0
class Remote:
    cache = Cache()
class Engine:
    programs = [{"name": "quick", "price": 250}]
cmds = Commands(Remote(), Engine(), None, bytes(32), "sim-0001",
                config_path=DIR + "/config.json")
x = []
for _ in range(450):
    x = [x]
raw = {"pricing": {"version": 9, "pad": x}}
def at(depth, f):
    return f() if depth == 0 else at(depth - 1, f)
def dumps_fails():
    try:
        json.dumps(x)
        return False
    except RuntimeError:
        return True
d = 0
while not at(d, dumps_fails):
    d += 10
try:
    at(d, lambda: _store(cmds, raw))
    print("RESULT", json.dumps("stored"))
except _Refused as e:
    print("RESULT", json.dumps(e.reason))
except RuntimeError as e:
    print("RESULT", json.dumps("crash"))
"""
    for got in run_both(code, tmp_path):
        assert got == ["config nested too deep to store"]
