# Front-panel buttons, debounced by polling: a press counts once the line has been held
# active for DEBOUNCE_MS, and again only after it was released.
import asyncio

from micropython import const

_DEBOUNCE_MS = const(30)
_POLL_MS = const(10)


class Keypad:
    def __init__(self, pins, active_low=True):
        self.names = list(pins)
        self.pins = [pins[n] for n in self.names]
        self.active = 0 if active_low else 1
        self.held = [0] * len(self.pins)  # ms held active, capped
        self.fired = [False] * len(self.pins)
        self._task = None

    async def run(self, on_press):
        while True:
            for i, pin in enumerate(self.pins):
                if pin.value() == self.active:
                    if self.held[i] < _DEBOUNCE_MS:
                        self.held[i] += _POLL_MS
                    elif not self.fired[i]:
                        self.fired[i] = True
                        await on_press(self.names[i])
                else:
                    self.held[i] = 0
                    self.fired[i] = False
            await asyncio.sleep_ms(_POLL_MS)
