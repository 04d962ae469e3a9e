# Entry point: MicroPython runs main.py at boot. The board is described by /board.json on
# the board's flash (written by provisioning); washpay.app does the rest.
from washpay import app

app.run()
