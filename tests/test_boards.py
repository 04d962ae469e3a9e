"""Board files and their validator: the shipped boards pass, and each pin rule catches the
mistake it exists for."""

import copy
import io
import json
from pathlib import Path

import pytest

from host_tools.boards import (
    HEAP_NEEDED_KIB,
    REQUIRED_PINS,
    BoardError,
    check_all,
    list_boards,
    load_board,
    validate_board,
    wiring_table,
)

ROOT = Path(__file__).resolve().parent.parent

# Warnings each shipped board is known to carry, as (signal, GPIO). A change to a board that
# adds or removes a warning must be a decision, so it has to be made here too.
EXPECTED_WARNINGS = {
    # VSPI's own CS pin; the MFRC522's NSS is an input and the strap pull-up keeps it high.
    "esp32-devkitc": {("card_cs", 5)},
    "esp32-s3-devkitc-1": set(),
    # GPIO2 carries the red LED (to GND): low at reset, which flashing over serial wants.
    "esp32-wrover-e": {("card_cs", 5), ("led_red", 2)},
    "sim": {("card_cs", 5)},
}


def errors(problems):
    return [p for p in problems if p.level == "error"]


def warnings(problems):
    return [p for p in problems if p.level == "warning"]


def find(problems, level, pin, gpio=None):
    """The problems of `level` about `pin` (and `gpio` if given)."""
    return [p for p in problems
            if p.level == level and p.pin == pin and (gpio is None or p.gpio == gpio)]


@pytest.fixture
def esp32():
    return copy.deepcopy(load_board("esp32-devkitc"))


@pytest.fixture
def s3():
    return copy.deepcopy(load_board("esp32-s3-devkitc-1"))


# --- the shipped boards -------------------------------------------------------------------


def test_every_board_folder_is_listed():
    on_disk = {p.parent.name for p in (ROOT / "boards").glob("*/board.json")}
    assert set(list_boards()) == on_disk
    assert on_disk == set(EXPECTED_WARNINGS)


@pytest.mark.parametrize("board_id", sorted(EXPECTED_WARNINGS))
def test_shipped_board_has_no_errors_and_only_the_expected_warnings(board_id):
    board = load_board(board_id)
    problems = validate_board(board)
    assert errors(problems) == []
    assert {(p.pin, p.gpio) for p in warnings(problems)} == EXPECTED_WARNINGS[board_id]
    assert board["id"] == board_id


def test_sim_board_is_wired_like_the_devkitc():
    sim, real = load_board("sim"), load_board("esp32-devkitc")
    assert sim["simulated"] is True
    assert sim["chip"] == "esp32"
    for key in ("firmware_offset", "flash_size", "vfs", "pins", "buses", "coin", "display",
                "washer"):
        assert sim[key] == real[key], key
    assert sim["sim"]["acceptor"]["pulses"] == {"50": 1, "100": 2, "200": 4}
    assert sim["sim"]["flash_blocks"] * sim["vfs"]["block_size"] == int(sim["vfs"]["size"], 0)


def test_check_all_passes_on_the_shipped_boards():
    out = io.StringIO()
    assert check_all(out=out) == 0
    for board_id in EXPECTED_WARNINGS:
        assert f"{board_id}: ok" in out.getvalue()


# --- each rule, on a crafted bad board ----------------------------------------------------


def test_the_clean_fixtures_have_no_errors(esp32, s3):
    # The negative tests below change one thing; this proves the error comes from that change.
    assert errors(validate_board(esp32)) == []
    assert errors(validate_board(s3)) == []


@pytest.mark.parametrize("gpio", [6, 7, 8, 9, 10, 11])
def test_esp32_flash_pin_is_an_error(esp32, gpio):
    esp32["pins"]["led_red"] = gpio
    [p] = find(validate_board(esp32), "error", "led_red", gpio)
    assert "flash" in p.message


@pytest.mark.parametrize("gpio", [26, 29, 32])
def test_s3_flash_pin_is_an_error(s3, gpio):
    s3["pins"]["relay"] = gpio
    [p] = find(validate_board(s3), "error", "relay", gpio)
    assert "flash" in p.message


def test_s3_gpio_26_is_not_flash_on_esp32(esp32):
    # Same number, other chip: the rules are per chip, not a global blocklist.
    esp32["pins"]["relay"] = 26
    assert errors(validate_board(esp32)) == []


def test_output_on_an_input_only_pin_is_an_error(esp32):
    esp32["pins"]["relay"] = 36
    [p] = find(validate_board(esp32), "error", "relay", 36)
    assert p.message == "relay: GPIO36 is input-only on esp32 and cannot drive an output"


def test_input_on_an_input_only_pin_is_fine(esp32):
    esp32["pins"]["btn_start"] = 36
    assert find(validate_board(esp32), "error", "btn_start") == []


def test_i2c_data_needs_an_output_driver(esp32):
    esp32["pins"]["i2c_sda"] = 36
    assert find(validate_board(esp32), "error", "i2c_sda", 36)


def test_same_gpio_twice_is_an_error_naming_both_signals(esp32):
    esp32["pins"]["led_red"] = esp32["pins"]["relay"]
    problems = validate_board(esp32)
    dupes = [p for p in errors(problems) if "already used" in p.message]
    assert len(dupes) == 1
    assert "relay" in dupes[0].message and "led_red" in dupes[0].message


@pytest.mark.parametrize("gpio", [0, 2, 12, 15])
def test_esp32_strapping_pin_is_a_warning_not_an_error(esp32, gpio):
    esp32["pins"]["led_red"] = gpio
    problems = validate_board(esp32)
    assert errors(problems) == []
    [p] = find(problems, "warning", "led_red", gpio)
    assert "strapping" in p.message


@pytest.mark.parametrize("gpio", [0, 3, 45, 46])
def test_s3_strapping_pin_is_a_warning(s3, gpio):
    s3["pins"]["led_red"] = gpio
    problems = validate_board(s3)
    assert errors(problems) == []
    assert find(problems, "warning", "led_red", gpio)


@pytest.mark.parametrize(("board", "pin", "gpio"), [
    ("esp32", "qr_tx", 1), ("esp32", "qr_rx", 3), ("s3", "qr_tx", 43), ("s3", "qr_rx", 44),
])
def test_console_uart_pin_is_an_error(esp32, s3, board, pin, gpio):
    b = {"esp32": esp32, "s3": s3}[board]
    b["pins"][pin] = gpio
    [p] = find(validate_board(b), "error", pin, gpio)
    assert "console" in p.message


@pytest.mark.parametrize("gpio", [19, 20])
def test_s3_usb_pin_is_a_warning(s3, gpio):
    s3["pins"]["led_green"] = gpio
    problems = validate_board(s3)
    assert errors(problems) == []
    assert "USB" in find(problems, "warning", "led_green", gpio)[0].message


def test_s3_octal_memory_pin_is_a_warning(s3):
    s3["pins"]["led_green"] = 35
    assert find(validate_board(s3), "warning", "led_green", 35)


@pytest.mark.parametrize(("board", "gpio"), [("esp32", 20), ("esp32", 24), ("esp32", 40),
                                             ("s3", 22), ("s3", 49), ("esp32", -1)])
def test_gpio_that_does_not_exist_is_an_error(esp32, s3, board, gpio):
    b = {"esp32": esp32, "s3": s3}[board]
    b["pins"]["buzzer"] = gpio
    [p] = find(validate_board(b), "error", "buzzer", gpio)
    assert "does not exist" in p.message


def test_non_integer_gpio_is_an_error(esp32):
    esp32["pins"]["buzzer"] = "14"
    assert find(validate_board(esp32), "error", "buzzer")


@pytest.mark.parametrize(("board", "offset"), [("esp32", "0x0"), ("esp32", "0x10000"),
                                               ("s3", "0x1000"), ("s3", None)])
def test_firmware_offset_for_the_wrong_chip_is_an_error(esp32, s3, board, offset):
    b = {"esp32": esp32, "s3": s3}[board]
    b["firmware_offset"] = offset
    problems = errors(validate_board(b))
    assert len(problems) == 1
    assert "firmware_offset" in problems[0].message


@pytest.mark.parametrize("pin", REQUIRED_PINS)
def test_missing_pin_is_an_error(esp32, pin):
    del esp32["pins"][pin]
    [p] = find(validate_board(esp32), "error", pin)
    assert p.gpio is None


def test_unknown_pin_name_is_a_warning(esp32):
    esp32["pins"]["relais"] = 0
    problems = validate_board(esp32)
    assert find(problems, "warning", "relais")


@pytest.mark.parametrize("mode", ["magic", None, "Contact"])
def test_bad_start_mode_is_an_error(esp32, mode):
    esp32["washer"]["start_mode"] = mode
    [p] = errors(validate_board(esp32))
    assert "start_mode" in p.message


@pytest.mark.parametrize("mode", ["contact", "power", "coin"])
def test_every_start_mode_is_accepted(esp32, mode):
    esp32["washer"]["start_mode"] = mode
    assert errors(validate_board(esp32)) == []


def test_coin_start_mode_needs_its_timings(esp32):
    esp32["washer"]["start_mode"] = "coin"
    del esp32["washer"]["coin_value"]
    [p] = errors(validate_board(esp32))
    assert "coin_value" in p.message


def test_active_level_must_be_low_or_high(esp32):
    esp32["washer"]["relay_active"] = "on"
    [p] = errors(validate_board(esp32))
    assert p.pin == "relay"


def test_unknown_chip_is_an_error(esp32):
    esp32["chip"] = "esp8266"
    [p] = validate_board(esp32)
    assert p.level == "error" and "esp8266" in p.message


@pytest.mark.parametrize(("flash_size", "size"), [("4MB", "0x100000"), ("8MB", "0x200000")])
def test_vfs_must_run_to_the_end_of_flash(esp32, flash_size, size):
    esp32["flash_size"] = flash_size
    esp32["vfs"]["size"] = size
    [p] = errors(validate_board(esp32))
    assert "vfs" in p.message


def test_sim_flash_blocks_must_cover_the_vfs():
    sim = copy.deepcopy(load_board("sim"))
    sim["sim"]["flash_blocks"] = 256
    [p] = errors(validate_board(sim))
    assert "flash_blocks" in p.message


# --- loading, the check command, the wiring table -----------------------------------------


def test_load_board_by_id_folder_and_file():
    by_id = load_board("esp32-devkitc")
    assert load_board(ROOT / "boards" / "esp32-devkitc") == by_id
    assert load_board(str(ROOT / "boards" / "esp32-devkitc" / "board.json")) == by_id


def test_unknown_board_names_the_known_ones():
    with pytest.raises(BoardError) as e:
        load_board("esp32-nope")
    assert "esp32-nope" in str(e.value) and "esp32-devkitc" in str(e.value)


def test_broken_json_says_where(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "board.json").write_text('{"id": "bad",\n "chip": }')
    with pytest.raises(BoardError, match="line 2"):
        load_board("bad", boards_dir=tmp_path)


def _write(root, board):
    (root / board["id"]).mkdir()
    (root / board["id"] / "board.json").write_text(json.dumps(board))


def test_check_all_fails_on_a_bad_board_and_says_why(tmp_path, esp32):
    _write(tmp_path, esp32)
    bad = copy.deepcopy(esp32)
    bad["id"] = "bad"
    bad["pins"]["relay"] = 34
    _write(tmp_path, bad)
    out = io.StringIO()
    assert check_all(boards_dir=tmp_path, out=out) == 1
    text = out.getvalue()
    assert "esp32-devkitc: ok" in text
    assert "relay: GPIO34 is input-only on esp32" in text


def test_check_all_catches_an_id_that_differs_from_its_folder(tmp_path, esp32):
    esp32["id"] = "other"
    (tmp_path / "esp32-devkitc").mkdir()
    (tmp_path / "esp32-devkitc" / "board.json").write_text(json.dumps(esp32))
    out = io.StringIO()
    assert check_all(boards_dir=tmp_path, out=out) == 1
    assert "does not match its folder" in out.getvalue()


def test_wiring_table_has_a_row_per_signal(esp32):
    lines = wiring_table(esp32).splitlines()
    assert lines[0] == "| Signal | GPIO | Direction | Note |"
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in lines[2:]}
    assert set(rows) == set(REQUIRED_PINS)
    assert [c.strip() for c in rows["relay"]] == [str(esp32["pins"]["relay"]), "out"]
    assert [c.strip() for c in rows["coin_pulse"]] == [str(esp32["pins"]["coin_pulse"]), "in"]
    assert "external" in wiring_table(esp32).split("| coin_pulse |")[1].splitlines()[0]


def test_docs_wiring_matches_the_board_files():
    # docs/wiring.md is generated with `python -m host_tools.boards wiring`; a board change
    # that is not carried into the docs fails here.
    doc = (ROOT / "docs" / "wiring.md").read_text()
    for board_id in EXPECTED_WARNINGS:
        assert wiring_table(load_board(board_id)) in doc, board_id


# --- memory: PSRAM, the GC heap, and how washpay is laid out ------------------------------


def test_each_shipped_board_says_its_heap_and_layout():
    """No PSRAM -> washpay frozen into MicroPython; PSRAM -> stock SPIRAM build + .mpy files."""
    want = {"esp32-devkitc": (None, "frozen", "ESP32_GENERIC"),
            "esp32-wrover-e": ("quad", "mpy", "ESP32_GENERIC-SPIRAM"),
            "esp32-s3-devkitc-1": ("octal", "mpy", "ESP32_GENERIC_S3-SPIRAM_OCT")}
    for board_id, (mode, layout, build) in want.items():
        board = load_board(board_id)
        mem = board["memory"]
        assert (mem["psram"] or {}).get("mode") == mode, board_id
        assert mem["layout"] == layout and board["micropython_build"] == build, board_id


def test_mpy_files_on_a_board_without_psram_is_an_error(esp32):
    esp32["memory"]["layout"] = "mpy"
    [p] = [p for p in errors(validate_board(esp32)) if p.message.startswith("memory")]
    assert f"needs {HEAP_NEEDED_KIB['mpy']} KiB" in p.message and "has 112 KiB" in p.message


def test_a_heap_too_small_even_for_the_frozen_layout_is_an_error(esp32):
    esp32["memory"]["gc_heap_kib"] = 64
    need = f"needs {HEAP_NEEDED_KIB['frozen']} KiB"
    assert any(need in p.message for p in errors(validate_board(esp32)))


def test_psram_board_needs_a_spiram_build_and_keeps_off_gpio16_17(esp32):
    esp32["memory"] = {"psram": {"size_mb": 8, "mode": "quad"}, "gc_heap_kib": 4000,
                       "layout": "mpy"}
    problems = errors(validate_board(esp32))
    assert any("micropython_build ESP32_GENERIC" in p.message for p in problems)
    assert {p.gpio for p in problems if "PSRAM" in p.message and p.gpio} == {16, 17}
    esp32["micropython_build"] = "ESP32_GENERIC-SPIRAM"
    esp32["pins"]["qr_tx"], esp32["pins"]["qr_rx"] = 13, 36
    esp32["pins"]["led_red"] = 2
    assert errors(validate_board(esp32)) == []


@pytest.mark.parametrize("memory,words", [
    (None, "memory is missing"),
    ({"psram": "lots", "gc_heap_kib": 112, "layout": "frozen"}, "memory.psram"),
    ({"psram": None, "gc_heap_kib": "112", "layout": "frozen"}, "gc_heap_kib"),
    ({"psram": None, "gc_heap_kib": 112, "layout": "romfs"}, "memory.layout"),
])
def test_malformed_memory_sections_are_errors(esp32, memory, words):
    esp32["memory"] = memory
    assert any(words in p.message for p in errors(validate_board(esp32)))


def test_octal_psram_only_on_the_s3(esp32):
    esp32["memory"]["psram"] = {"size_mb": 8, "mode": "octal"}
    esp32["micropython_build"] = "ESP32_GENERIC-SPIRAM"
    assert any("octal PSRAM exists only on esp32s3" in p.message
               for p in errors(validate_board(esp32)))
